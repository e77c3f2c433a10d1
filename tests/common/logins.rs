//! The real-login harness shared by tests/real_logins.rs and tests/rollout.rs: the snippets of
//! conf/ pointed at the built module, real users in the private host (tests/private-host.sh),
//! a pseudo-terminal driver that answers each prompt when it is shown, and a private sshd.
//! tests/real_logins.rs says how the host stays untouched and how prompts are answered.

use super::*;
use std::ffi::CStr;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const PROMPT: &str = "tru.ID code: ";
pub const PASSWORD: &str = "Truid-test-pw-1";
/// Upper bound for one login, far above what one takes (well under a second).
pub const LOGIN_DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Snippets from conf/

pub fn conf(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conf")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `text` (a PAM stack or a pam-auth-update profile) as the test runs it: on every
/// (non-comment) line naming `pam_truid.so`, that word becomes the built module's path followed
/// by `config=` and `syslog_socket=` for this test. Nothing else changes (a line's leading
/// whitespace, which continues a profile's field, is kept). There must be one such line.
pub fn pointed_at_test_module(w: &World, text: &str, what: &str) -> String {
    let module = format!(
        "{} config={} syslog_socket={}",
        module_path().display(),
        w.path("pam_truid.toml").display(),
        w.log.path.display()
    );
    let mut replaced = 0;
    let mut out = String::new();
    for line in text.lines() {
        if !line.trim_start().starts_with('#')
            && line.split_whitespace().any(|t| t == "pam_truid.so")
        {
            replaced += 1;
            let words: Vec<&str> = line
                .split_whitespace()
                .map(|t| {
                    if t == "pam_truid.so" {
                        module.as_str()
                    } else {
                        t
                    }
                })
                .collect();
            out.push_str(&line[..line.len() - line.trim_start().len()]);
            out.push_str(&words.join(" "));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    assert_eq!(replaced, 1, "{what}: one pam_truid.so line");
    out
}

/// The snippet `conf/pam.d/<name>` as the test runs it (`pointed_at_test_module`), written
/// into the test's folder.
pub fn snippet_stack(w: &World, name: &str) -> PathBuf {
    let out = pointed_at_test_module(
        w,
        &conf(&format!("pam.d/{name}")),
        &format!("conf/pam.d/{name}"),
    );
    let p = w.path(&format!("pam-{name}"));
    std::fs::write(&p, out).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

// ---------------------------------------------------------------------------------------------
// Users and codes

pub static USERADD: Mutex<()> = Mutex::new(());

/// The private host this test binary runs in (tests/private-host.sh): the folder whose `etc`
/// is bound over /etc in this mount namespace. Panics anywhere else, so that a plain
/// `cargo test` never adds an account to (or changes a password of) the real host.
pub fn private_host() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    private_host_in(std::env::var_os("TRUID_PRIVATE_HOST"), &mountinfo).unwrap_or_else(|why| {
        panic!(
            "these tests add Unix users, and do so only in a private copy of /etc: run them \
             through tests/private-host.sh (sudo tests/private-host.sh cargo test --test \
             real_logins) or run sudo .ci/run, which does. Not in one here: {why}"
        )
    })
}

/// `private_host`'s checks: the script's variable names a folder, /etc is a mount point in
/// this namespace (field 5 of `mountinfo`), and /etc is that folder's `etc` (same device and
/// inode), not some other mount.
pub fn private_host_in(
    var: Option<std::ffi::OsString>,
    mountinfo: &str,
) -> Result<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    let root = PathBuf::from(var.ok_or("TRUID_PRIVATE_HOST is not set")?);
    if root.canonicalize().ok().as_deref() == Some(Path::new("/")) {
        return Err("TRUID_PRIVATE_HOST names / itself".into());
    }
    if !mountinfo
        .lines()
        .any(|l| l.split(' ').nth(4) == Some("/etc"))
    {
        return Err("/etc is not a mount point in this mount namespace".into());
    }
    match (
        std::fs::metadata("/etc"),
        std::fs::metadata(root.join("etc")),
    ) {
        (Ok(a), Ok(b)) if a.dev() == b.dev() && a.ino() == b.ino() => Ok(root),
        _ => Err(format!("/etc is not {}/etc", root.display())),
    }
}

/// Creates the user when missing, in the private host only (useradd takes a lock on
/// /etc/passwd: one at a time). The home folder goes into the private host as well.
pub fn ensure_user(name: &str) {
    let root = private_host();
    let _one_at_a_time = USERADD.lock().unwrap_or_else(|e| e.into_inner());
    let exists = Command::new("id")
        .args(["-u", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    if !exists {
        let out = Command::new("useradd")
            .args(["-m", "-s", "/bin/sh", "-b"])
            .arg(root.join("home"))
            .arg(name)
            .output()
            .unwrap();
        // 9: the name exists (created meanwhile by another run).
        assert!(
            out.status.success() || out.status.code() == Some(9),
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Gives the user the Unix password PASSWORD (in the private host only).
pub fn set_password(name: &str) {
    private_host();
    let _one_at_a_time = USERADD.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(format!("{name}:{PASSWORD}\n").as_bytes())
        .unwrap();
    assert!(c.wait().unwrap().success(), "chpasswd {name}");
}

// ---------------------------------------------------------------------------------------------
// Process groups

/// Kills a process group we started (its leader is our child), then reaps the child.
pub fn kill_group(child: &mut Child) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    let pid = child.id() as i32;
    unsafe {
        libc::kill(-pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// Waits for the child until `deadline`; kills its group past it.
pub fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            kill_group(child);
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `argv` run in a private mount namespace in which each `(file, over)` is bind-mounted.
pub fn in_namespace(binds: &[(&Path, &str)], argv: &[&str]) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "--", "sh", "-c"]);
    c.arg(
        "while [ \"$1\" != -- ]; do mount --bind \"$1\" \"$2\" || exit 111; shift 2; done; \
         shift; exec \"$@\"",
    );
    c.arg("sh");
    for (file, over) in binds {
        c.arg(file).arg(over);
    }
    c.arg("--");
    c.args(argv);
    c
}

// ---------------------------------------------------------------------------------------------
// A pseudo-terminal driver

/// What a person at the terminal saw and how the program ended.
#[derive(Debug)]
pub struct Session {
    /// `None`: killed at the deadline, or because it asked more than we had answers for.
    pub status: Option<ExitStatus>,
    pub prompts: Vec<String>,
    /// Everything the terminal showed, without carriage returns.
    pub transcript: String,
}

impl Session {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The lines printed after the last prompt (the command's output).
    pub fn output_lines(&self) -> Vec<&str> {
        let tail = match self.prompts.last() {
            Some(p) => self
                .transcript
                .rsplit_once(p.as_str())
                .map_or(self.transcript.as_str(), |(_, t)| t),
            None => self.transcript.as_str(),
        };
        tail.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    }
}

pub struct Pty {
    pub child: Child,
    pub master: OwnedFd,
    pub buf: Vec<u8>,
    pub answered: usize,
}

impl Drop for Pty {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

pub fn open_pty() -> (OwnedFd, OwnedFd) {
    // O_CLOEXEC from the start: a program started by another thread must never inherit this
    // terminal, or the end of output (EIO once every slave is closed) would never come.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(m >= 0, "posix_openpt");
        let master = OwnedFd::from_raw_fd(m);
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
        let s = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        assert!(
            s >= 0,
            "open {}",
            CStr::from_ptr(name.as_ptr()).to_string_lossy()
        );
        let flags = libc::fcntl(m, libc::F_GETFL);
        libc::fcntl(m, libc::F_SETFL, flags | libc::O_NONBLOCK);
        (master, OwnedFd::from_raw_fd(s))
    }
}

impl Pty {
    /// Starts `cmd` in a new session whose controlling terminal is a fresh pseudo-terminal.
    pub fn spawn(mut cmd: Command) -> Pty {
        let (master, slave) = open_pty();
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        // `cmd` still holds the slave copies: drop them so that EIO marks the end.
        drop(cmd);
        Pty {
            child,
            master,
            buf: Vec::new(),
            answered: 0,
        }
    }

    /// Reads what is there within `wait`; false at the end of output.
    pub fn pump(&mut self, wait: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let n = unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as i32) };
        if n <= 0 {
            return true;
        }
        let mut tmp = [0u8; 4096];
        let r = unsafe {
            libc::read(
                self.master.as_raw_fd(),
                tmp.as_mut_ptr() as *mut libc::c_void,
                tmp.len(),
            )
        };
        if r > 0 {
            self.buf.extend_from_slice(&tmp[..r as usize]);
            true
        } else if r == 0 {
            false
        } else {
            // EIO: every slave end is closed, the program is gone.
            std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
        }
    }

    pub fn echo_off(&self) -> bool {
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        unsafe {
            libc::tcgetattr(self.master.as_raw_fd(), &mut t) == 0 && t.c_lflag & libc::ECHO == 0
        }
    }

    pub fn write_line(&mut self, s: &str) {
        let line = format!("{s}\n");
        let mut f = std::fs::File::from(self.master.try_clone().unwrap());
        let mut rest = line.as_bytes();
        while !rest.is_empty() {
            match f.write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("write to terminal: {e}"),
            }
        }
    }

    /// Answers each prompt with `answers[i]` until the program ends; a prompt beyond the
    /// answers ends the program.
    pub fn converse(mut self, answers: &[&str]) -> Session {
        let deadline = Instant::now() + LOGIN_DEADLINE;
        let mut prompts = Vec::new();
        let mut killed = false;
        loop {
            if Instant::now() >= deadline {
                killed = true;
                break;
            }
            if !self.pump(Duration::from_millis(20)) {
                break;
            }
            let pending = String::from_utf8_lossy(&self.buf[self.answered..]).into_owned();
            let last = pending.rsplit('\n').next().unwrap_or("").replace('\r', "");
            if last.ends_with(": ") && self.echo_off() {
                self.answered = self.buf.len();
                let n = prompts.len();
                prompts.push(last);
                match answers.get(n) {
                    Some(a) => self.write_line(a),
                    None => {
                        killed = true;
                        break;
                    }
                }
            }
        }
        let status = if killed {
            kill_group(&mut self.child);
            None
        } else {
            wait_until(&mut self.child, deadline)
        };
        let transcript = String::from_utf8_lossy(&self.buf).replace('\r', "");
        Session {
            status,
            prompts,
            transcript,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A private sshd

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SshVariant {
    /// conf/pam.d/sshd-publickey with `AuthenticationMethods publickey,keyboard-interactive`.
    Publickey,
    /// conf/pam.d/sshd-password with `AuthenticationMethods keyboard-interactive`.
    Password,
    /// conf/pam.d/sshd-combined with the sshd lines its header names (`PasswordAuthentication
    /// yes`, `AuthenticationMethods password keyboard-interactive`). As a client: ssh's
    /// `password` method only.
    Combined,
}

pub struct Sshd {
    pub child: Child,
    pub port: u16,
    pub client_key: PathBuf,
    pub log: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

pub fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// conf/sshd_config.d/pam_truid.conf for a variant: as written for key + tru.ID; for
/// password + tru.ID, the one AuthenticationMethods line swapped for the commented one, as the
/// file tells the administrator to.
pub fn sshd_snippet(variant: SshVariant) -> String {
    let text = conf("sshd_config.d/pam_truid.conf");
    let key = "\nAuthenticationMethods publickey,keyboard-interactive\n";
    let pw = "\n#AuthenticationMethods keyboard-interactive\n";
    assert!(text.contains(key) && text.contains(pw), "{text}");
    match variant {
        SshVariant::Publickey => text,
        SshVariant::Password => text
            .replace(
                key,
                "\n#AuthenticationMethods publickey,keyboard-interactive\n",
            )
            .replace(pw, "\nAuthenticationMethods keyboard-interactive\n"),
        // As conf/pam.d/sshd-combined says: its commented line instead of the others, and
        // PasswordAuthentication on.
        SshVariant::Combined => {
            let off = "\nPasswordAuthentication no\n";
            let one = "\n#AuthenticationMethods password keyboard-interactive\n";
            assert!(text.contains(off) && text.contains(one), "{text}");
            text.replace(off, "\nPasswordAuthentication yes\n")
                .replace(
                    key,
                    "\n#AuthenticationMethods publickey,keyboard-interactive\n",
                )
                .replace(
                    one,
                    "\nAuthenticationMethods password keyboard-interactive\n",
                )
        }
    }
}

impl Sshd {
    pub fn start(w: &World, variant: SshVariant) -> Sshd {
        let stack = snippet_stack(
            w,
            match variant {
                SshVariant::Publickey => "sshd-publickey",
                SshVariant::Password => "sshd-password",
                SshVariant::Combined => "sshd-combined",
            },
        );
        std::fs::create_dir_all("/run/sshd").unwrap();
        let host_key = w.path("ssh_host_ed25519_key");
        let client_key = w.path("client_key");
        for k in [&host_key, &client_key] {
            if !k.exists() {
                run_ok(
                    Command::new("ssh-keygen")
                        .args(["-q", "-t", "ed25519", "-N", ""])
                        .arg("-f")
                        .arg(k),
                );
            }
        }
        let authorized = w.path("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized).unwrap();
        std::fs::set_permissions(&authorized, std::fs::Permissions::from_mode(0o644)).unwrap();
        let log = w.path("sshd.log");
        let cfg = w.path("sshd_config");
        let mut last_log = String::new();
        // A free port can be taken between our look and sshd's bind: then try another.
        for _ in 0..5 {
            let port = free_port();
            let text = format!(
                "{}\n# The test's own lines.\nPort {port}\nListenAddress 127.0.0.1\nHostKey {}\n\
                 PidFile {}\nAuthorizedKeysFile {}\nStrictModes no\nUseDNS no\nPrintMotd no\n\
                 MaxStartups 200\nLogLevel VERBOSE\n",
                sshd_snippet(variant),
                host_key.display(),
                w.path("sshd.pid").display(),
                authorized.display()
            );
            std::fs::write(&cfg, text).unwrap();
            run_ok(Command::new("/usr/sbin/sshd").arg("-t").arg("-f").arg(&cfg));
            let _ = std::fs::remove_file(&log);
            let sshd_cmd = [
                "/usr/sbin/sshd",
                "-D",
                "-f",
                cfg.to_str().unwrap(),
                "-E",
                log.to_str().unwrap(),
            ];
            let mut cmd = in_namespace(&[(&stack, "/etc/pam.d/sshd")], &sshd_cmd);
            cmd.process_group(0).stdin(Stdio::null());
            let mut sshd = Sshd {
                child: cmd.spawn().unwrap(),
                port,
                client_key: client_key.clone(),
                log: log.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if sshd.child.try_wait().unwrap().is_some() {
                    break;
                }
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    // Ready when it greets: the listener is sshd's, not another test's.
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut hello = [0u8; 8];
                    if s.read_exact(&mut hello).is_ok() && hello.starts_with(b"SSH-2.0") {
                        return sshd;
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "sshd not ready: {}",
                    sshd.log_text()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            last_log = sshd.log_text();
            if !last_log.contains("Address already in use") {
                break;
            }
        }
        panic!("sshd did not start: {last_log}");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ssh user@127.0.0.1 id -un` on a terminal, answering prompts with `answers`.
    pub fn login(&self, variant: SshVariant, user: &str, answers: &[&str]) -> Session {
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null", "-p", &self.port.to_string()])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=30"])
            .args(["-o", "NumberOfPasswordPrompts=1", "-o", "BatchMode=no"]);
        match variant {
            SshVariant::Publickey => {
                c.arg("-i").arg(&self.client_key).args([
                    "-o",
                    "IdentitiesOnly=yes",
                    "-o",
                    "PreferredAuthentications=publickey,keyboard-interactive",
                ]);
            }
            SshVariant::Password => {
                c.args([
                    "-o",
                    "PubkeyAuthentication=no",
                    "-o",
                    "PreferredAuthentications=keyboard-interactive",
                ]);
            }
            SshVariant::Combined => {
                c.args([
                    "-o",
                    "PubkeyAuthentication=no",
                    "-o",
                    "KbdInteractiveAuthentication=no",
                    "-o",
                    "PreferredAuthentications=password",
                ]);
            }
        }
        c.arg(format!("{user}@127.0.0.1")).args(["id", "-un"]);
        Pty::spawn(c).converse(answers)
    }
}

/// A World with `users` created and enrolled, the config written (`login` lines), and a
/// private sshd running the variant's stack. Returns the factors in `users`' order.
pub fn ssh_world(
    variant: SshVariant,
    login: &str,
    users: &[&str],
    enrolled: bool,
) -> (World, Sshd, Vec<String>) {
    let w = World::new();
    let factors: Vec<String> = users
        .iter()
        .map(|u| {
            ensure_user(u);
            if variant != SshVariant::Publickey {
                set_password(u);
            }
            w.enroll(u)
        })
        .collect();
    let pairs: Vec<(&str, &str)> = if enrolled {
        users
            .iter()
            .zip(&factors)
            .map(|(u, f)| (*u, f.as_str()))
            .collect()
    } else {
        Vec::new()
    };
    w.config(login, &pairs);
    let sshd = Sshd::start(&w, variant);
    (w, sshd, factors)
}

pub fn assert_logged_in(s: &Session, user: &str, sshd: Option<&Sshd>) {
    assert!(
        s.ok() && s.output_lines().last() == Some(&user),
        "{user} not logged in: {s:#?}\n{}",
        sshd.map(|d| d.log_text()).unwrap_or_default()
    );
}

pub fn assert_refused(s: &Session) {
    assert!(
        s.status.is_some_and(|st| !st.success()),
        "not refused: {s:#?}"
    );
}

pub fn ssh_prompt(user: &str, prompt: &str) -> String {
    format!("({user}@127.0.0.1) {prompt}")
}

/// The prompts as the PAM stack wrote them: OpenSSH's client puts "(user@host) " before the
/// first prompt of a keyboard-interactive exchange only.
pub fn pam_prompts(s: &Session) -> Vec<String> {
    s.prompts
        .iter()
        .map(|p| {
            match p
                .strip_prefix('(')
                .and_then(|r| r.split_once("@127.0.0.1) "))
            {
                Some((_, rest)) => rest.to_string(),
                None => p.clone(),
            }
        })
        .collect()
}

/// Creates the group when missing and adds `users` to it (in the private host only).
pub fn ensure_group_with(group: &str, users: &[&str]) {
    private_host();
    let _one_at_a_time = USERADD.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new("groupadd").arg(group).output().unwrap();
    // 9: the group exists.
    assert!(
        out.status.success() || out.status.code() == Some(9),
        "groupadd {group}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for u in users {
        run_ok(Command::new("usermod").args(["-a", "-G", group, u]));
    }
}

// ---------------------------------------------------------------------------------------------
// The pam-auth-update profile

/// The folders `pam-auth-update` reads and writes, each bound over by a private copy: the PAM
/// stacks, the profiles, its own record of what it wrote and debconf's answers.
const PAM_AUTH_UPDATE_STATE: [(&str, &str); 4] = [
    ("pam.d", "/etc/pam.d"),
    ("pam-configs", "/usr/share/pam-configs"),
    ("var-lib-pam", "/var/lib/pam"),
    ("debconf", "/var/cache/debconf"),
];

/// Runs the real `pam-auth-update --enable truid --package` in a private mount namespace in
/// which /usr/share/pam-configs/truid is `profile` (the shipped one, its module line pointed
/// at the built module by the caller) and every folder it writes is a copy. Returns the copy
/// of /etc/pam.d it left: the host's PAM stacks as the profile makes them.
pub fn pam_auth_update_with(w: &World, profile: &str) -> PathBuf {
    for (copy, of) in PAM_AUTH_UPDATE_STATE {
        run_ok(Command::new("cp").arg("-a").arg(of).arg(w.path(copy)));
    }
    std::fs::write(w.path("pam-configs").join("truid"), profile).unwrap();
    let copies: Vec<PathBuf> = PAM_AUTH_UPDATE_STATE
        .iter()
        .map(|(copy, _)| w.path(copy))
        .collect();
    let binds: Vec<(&Path, &str)> = copies
        .iter()
        .zip(PAM_AUTH_UPDATE_STATE)
        .map(|(c, (_, of))| (c.as_path(), of))
        .collect();
    let mut cmd = in_namespace(
        &binds,
        &["pam-auth-update", "--enable", "truid", "--package"],
    );
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    run_ok(&mut cmd);
    w.path("pam.d")
}

/// The shipped pam-auth-update profile's text.
pub fn shipped_profile() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/pam-configs/truid"),
    )
    .unwrap()
}
