//! Changing the config file: comments, order and formatting kept (toml_edit), owner and mode
//! kept, the new text checked as the module would check it, written atomically under a lock.
//! The CLI's commands, the agent's self-service enrolment and first-login enrolment all write
//! through here.

use crate::config::{read_text, Config};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use toml_edit::DocumentMut;

/// Held while a command reads, changes and writes the config: two `enroll` runs at once both
/// land their line.
struct Lock(#[allow(dead_code)] nix::fcntl::Flock<File>);

fn lock(path: &Path) -> Result<Lock, String> {
    let lock_path = lock_path(path);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&lock_path)
        .map_err(|e| format!("{}: cannot open the lock file: {e}", lock_path.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map(Lock)
        .map_err(|(_, e)| format!("{}: cannot lock: {e}", lock_path.display()))
}

fn lock_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("pam_truid.toml");
    path.with_file_name(format!(".{name}.lock"))
}

/// Applies `change` to the file's document and writes the result.
pub fn update(
    path: &Path,
    change: impl FnOnce(&mut DocumentMut) -> Result<(), String>,
) -> Result<(), String> {
    let _lock = lock(path)?;
    let text = read_text(path).map_err(|e| e.to_string())?;
    let mut doc: DocumentMut = text
        .parse()
        // In words, never toml_edit's own rendering: it quotes the line, which may be a secret's.
        .map_err(|e: toml_edit::TomlError| {
            format!(
                "{}: {}",
                path.display(),
                crate::config::toml_error_in_words(&text, e.message(), e.span())
            )
        })?;
    change(&mut doc)?;
    let new_text = doc.to_string();
    // Never write a file the module would refuse.
    Config::parse(path, &new_text).map_err(|e| e.to_string())?;
    write_atomically(path, new_text.as_bytes()).map_err(|e| {
        format!(
            "{}: cannot write: {e}; the file is unchanged",
            path.display()
        )
    })
}

/// A temporary file in the same folder with the old file's owner and mode, fsync, rename,
/// fsync of the folder: a crash at any moment leaves the old file or the new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("config"),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(meta.mode() & 0o7777)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        nix::unistd::fchown(&f, Some(meta.uid().into()), Some(meta.gid().into()))?;
        copy_label(path, &f);
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Gives the new file the old one's SELinux label (`pam_truid_conf_t`), which a file made in
/// the folder would not get (it would be `etc_t`, which the agent and the login domains may
/// not replace). Nothing to copy without SELinux: then nothing is done.
fn copy_label(old: &Path, new: &File) {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let name = c"security.selinux";
    let Ok(old) = std::ffi::CString::new(old.as_os_str().as_bytes()) else {
        return;
    };
    let mut label = [0u8; 256];
    // SAFETY: `old` and `name` are NUL-terminated; `label` is a buffer of the length given.
    let n = unsafe {
        libc::lgetxattr(
            old.as_ptr(),
            name.as_ptr(),
            label.as_mut_ptr().cast(),
            label.len(),
        )
    };
    let Ok(n) = usize::try_from(n) else { return };
    if let Some(value) = label.get(..n) {
        // SAFETY: `new` is an open file; `value` is a buffer of the length given.
        let _ = unsafe {
            libc::fsetxattr(
                new.as_raw_fd(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
    }
}

/// Sets `[users] user = "factor"`, creating the table if needed.
pub fn set_user(doc: &mut DocumentMut, user: &str, factor: &str) {
    set_in(doc, "users", user, factor.to_string());
}

/// Sets `[phones] user = "+number"` (push needs the number; tru.ID's factor does not give it).
pub fn set_phone(doc: &mut DocumentMut, user: &str, e164_digits: &str) {
    set_in(doc, "phones", user, format!("+{e164_digits}"));
}

/// `[table] key = "value"`, the table made (or made a table) first.
fn set_in(doc: &mut DocumentMut, table: &str, key: &str, value: String) {
    let item = doc.entry(table).or_insert_with(toml_edit::table);
    if !item.is_table_like() {
        *item = toml_edit::table();
    }
    if let Some(t) = item.as_table_like_mut() {
        t.insert(key, toml_edit::value(value));
    }
}

/// Removes `[users] user`; true when it was there.
pub fn remove_user(doc: &mut DocumentMut, user: &str) -> bool {
    let removed = |table: &str, doc: &mut DocumentMut| {
        doc.get_mut(table)
            .and_then(|u| u.as_table_like_mut())
            .is_some_and(|t| t.remove(user).is_some())
    };
    let phone = removed("phones", doc);
    removed("users", doc) || phone
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_keep_comments_and_order() {
        let text = "# top comment\n[api]\nclient_id = \"a\" # inline\nclient_secret = \"b\"\n\n[users]\n# who\nzed = \"5995afaf-f5d1-47ab-b586-50ad46904eec\"\n";
        let mut doc: DocumentMut = text.parse().unwrap();
        set_user(&mut doc, "alice", "5995afaf-f5d1-47ab-b586-50ad46904eed");
        let out = doc.to_string();
        assert!(
            out.starts_with("# top comment\n[api]\nclient_id = \"a\" # inline\n"),
            "{out}"
        );
        assert!(out.contains("# who\nzed = "), "{out}");
        assert!(
            out.ends_with("alice = \"5995afaf-f5d1-47ab-b586-50ad46904eed\"\n"),
            "{out}"
        );
        assert!(remove_user(&mut doc, "alice"));
        assert_eq!(doc.to_string(), text);
        assert!(!remove_user(&mut doc, "alice"));
    }

    #[test]
    fn directory_names_are_written_as_quoted_keys() {
        let mut doc: DocumentMut = "[api]\nclient_id = \"a\"\n".parse().unwrap();
        set_user(&mut doc, "bob@ad.example.com", "x");
        set_user(&mut doc, "AD\\bob", "y");
        set_user(&mut doc, "a\"b", "z");
        set_phone(&mut doc, "bob@ad.example.com", "447700900000");
        let out = doc.to_string();
        assert!(out.contains("\n\"bob@ad.example.com\" = \"x\"\n"), "{out}");
        let back: toml::Table = toml::from_str(&out).unwrap();
        let users = back["users"].as_table().unwrap();
        assert_eq!(users["AD\\bob"].as_str(), Some("y"));
        assert_eq!(users["a\"b"].as_str(), Some("z"));
        assert_eq!(
            back["phones"]["bob@ad.example.com"].as_str(),
            Some("+447700900000")
        );
        assert!(remove_user(&mut doc, "AD\\bob"));
        assert!(!doc.to_string().contains("AD"));
    }

    /// The config's SELinux label survives a rewrite (root sets a security.* label; ext4 and
    /// tmpfs keep such labels without SELinux too).
    #[test]
    fn a_rewrite_keeps_the_files_selinux_label() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "sets a security.* label, which needs root: run the tests as root (sudo .ci/run)"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pam_truid.toml");
        std::fs::write(&p, "old").unwrap();
        let label = c"system_u:object_r:pam_truid_conf_t:s0";
        let cpath = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        let set = unsafe {
            libc::setxattr(
                cpath.as_ptr(),
                c"security.selinux".as_ptr(),
                label.as_ptr().cast(),
                label.to_bytes_with_nul().len(),
                0,
            )
        };
        assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
        write_atomically(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        let mut got = [0u8; 256];
        let n = unsafe {
            libc::getxattr(
                cpath.as_ptr(),
                c"security.selinux".as_ptr(),
                got.as_mut_ptr().cast(),
                got.len(),
            )
        };
        assert_eq!(&got[..n as usize], label.to_bytes_with_nul());
    }

    #[test]
    fn users_table_created_when_missing() {
        let mut doc: DocumentMut = "[api]\nclient_id = \"a\"\n".parse().unwrap();
        set_user(&mut doc, "bob", "x");
        assert!(doc.to_string().contains("[users]\nbob = \"x\"\n"));
    }
}
