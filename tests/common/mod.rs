//! Shared by the integration tests: real libpam driven through `pam_start_confdir` with a
//! scripted conversation, a syslog listener the module logs to, the emulator, config files.
#![allow(dead_code)]

pub mod daemon;
pub mod logins;
pub mod recovery;
pub mod services;

use std::collections::VecDeque;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use truid_emulator::{Emulator, FactorType, Fault, FaultKind, Options, Route};

pub const PAM_SUCCESS: i32 = 0;
pub const PAM_SERVICE_ERR: i32 = 3;
pub const PAM_PERM_DENIED: i32 = 6;
pub const PAM_AUTH_ERR: i32 = 7;
pub const PAM_AUTHINFO_UNAVAIL: i32 = 9;
pub const PAM_CONV_ERR: i32 = 19;
pub const PAM_IGNORE: i32 = 25;

const PAM_PROMPT_ECHO_OFF: c_int = 1;
const PAM_PROMPT_ECHO_ON: c_int = 2;
const PAM_ERROR_MSG: c_int = 3;
const PAM_TEXT_INFO: c_int = 4;
const PAM_TTY: c_int = 3;
const PAM_RHOST: c_int = 4;
const PAM_RUSER: c_int = 8;
const PAM_FAIL_DELAY: c_int = 10;

#[repr(C)]
struct PamMessage {
    msg_style: c_int,
    msg: *const c_char,
}

#[repr(C)]
struct PamResponse {
    resp: *mut c_char,
    resp_retcode: c_int,
}

#[repr(C)]
struct PamConv {
    conv: Option<
        extern "C" fn(c_int, *mut *const PamMessage, *mut *mut PamResponse, *mut c_void) -> c_int,
    >,
    appdata_ptr: *mut c_void,
}

#[link(name = "pam")]
extern "C" {
    fn pam_start_confdir(
        service: *const c_char,
        user: *const c_char,
        conv: *const PamConv,
        confdir: *const c_char,
        pamh: *mut *mut c_void,
    ) -> c_int;
    fn pam_authenticate(pamh: *mut c_void, flags: c_int) -> c_int;
    fn pam_set_item(pamh: *mut c_void, item_type: c_int, item: *const c_void) -> c_int;
    fn pam_end(pamh: *mut c_void, status: c_int) -> c_int;
}

extern "C" {
    /// glibc's lock on the account files, which useradd takes too.
    fn lckpwdf() -> c_int;
    fn ulckpwdf() -> c_int;
}

/// What the application side of the conversation saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Prompt(String),
    EchoOnPrompt(String),
    Info(String),
    Error(String),
}

/// A scripted person at the keyboard.
#[derive(Default)]
pub struct Script {
    pub answers: VecDeque<String>,
    pub seen: Vec<Seen>,
    /// Answer every message with PAM_CONV_ERR (a broken application).
    pub broken: bool,
    /// Refuse PAM_PROMPT_ECHO_ON, as a display manager's password box does.
    pub echo_off_only: bool,
    /// The wait libpam asked this application to make after the login (`PAM_FAIL_DELAY`): the
    /// longest `pam_fail_delay` of the stack, in microseconds, as (PAM result, wait).
    pub fail_delay: Option<(i32, u32)>,
    /// How long the person takes to type each echo-off answer (slept before it is given):
    /// the time a login spends at the prompt, which the link faults are about.
    pub typing: Duration,
    /// Answers an echo-off prompt from its text when the list has none left (the person who
    /// reads a key off the prompt and types what the app shows).
    pub answer_from: Option<AnswerFrom>,
}

/// What `Script::answer_from` holds.
pub type AnswerFrom = Box<dyn FnMut(&str) -> Option<String> + Send>;

impl Script {
    pub fn answering(answers: &[&str]) -> Script {
        Script {
            answers: answers.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    pub fn prompts(&self) -> Vec<&str> {
        self.seen
            .iter()
            .filter_map(|s| match s {
                Seen::Prompt(p) => Some(p.as_str()),
                _ => None,
            })
            .collect()
    }
}

extern "C" fn scripted_conv(
    num: c_int,
    msgs: *mut *const PamMessage,
    resp: *mut *mut PamResponse,
    appdata: *mut c_void,
) -> c_int {
    // SAFETY: libpam passes `num` message pointers and our own Script as appdata.
    let script = unsafe { &mut *(appdata as *mut Script) };
    if script.broken || num <= 0 {
        return PAM_CONV_ERR;
    }
    let out = unsafe { libc::calloc(num as usize, std::mem::size_of::<PamResponse>()) }
        as *mut PamResponse;
    for i in 0..num as usize {
        let m = unsafe { &**msgs.add(i) };
        let text = unsafe { CStr::from_ptr(m.msg) }
            .to_string_lossy()
            .into_owned();
        let answer = match m.msg_style {
            PAM_PROMPT_ECHO_OFF => {
                script.seen.push(Seen::Prompt(text));
                // The scenario itself (the person typing), not a wait for anything.
                std::thread::sleep(script.typing);
                let from_text = |script: &mut Script, text: &str| {
                    script.answer_from.as_mut().and_then(|f| f(text))
                };
                let text = match &script.seen.last() {
                    Some(Seen::Prompt(t)) => t.clone(),
                    _ => String::new(),
                };
                match script
                    .answers
                    .pop_front()
                    .or_else(|| from_text(script, &text))
                {
                    Some(a) => Some(a),
                    None => {
                        unsafe { libc::free(out as *mut c_void) };
                        return PAM_CONV_ERR;
                    }
                }
            }
            PAM_PROMPT_ECHO_ON => {
                script.seen.push(Seen::EchoOnPrompt(text));
                if script.echo_off_only {
                    unsafe { libc::free(out as *mut c_void) };
                    return PAM_CONV_ERR;
                }
                script.answers.pop_front()
            }
            PAM_ERROR_MSG => {
                script.seen.push(Seen::Error(text));
                None
            }
            PAM_TEXT_INFO => {
                script.seen.push(Seen::Info(text));
                None
            }
            _ => {
                unsafe { libc::free(out as *mut c_void) };
                return PAM_CONV_ERR;
            }
        };
        if let Some(a) = answer {
            let c = CString::new(a).unwrap_or_default();
            unsafe { (*out.add(i)).resp = libc::strdup(c.as_ptr()) };
        }
    }
    unsafe { *resp = out };
    PAM_SUCCESS
}

/// A login's PAM items besides the user.
#[derive(Default, Clone)]
pub struct Items {
    pub rhost: Option<String>,
    pub tty: Option<String>,
    pub ruser: Option<String>,
}

/// Runs `pam_authenticate` for `service` from the stacks in `confdir`, through real libpam.
pub fn pam_login(
    confdir: &Path,
    service: &str,
    user: &str,
    items: &Items,
    script: &mut Script,
) -> i32 {
    pam_login_as(confdir, service, Some(user), items, script)
}

/// `pam_login` where the application may give no user at all (`pam_start` with NULL): the
/// module then asks libpam, which prompts for one.
///
/// The application takes over libpam's delay after a failure (`PAM_FAIL_DELAY`, as sshd may)
/// and waits not at all, so that the many denials of the tests cost no time;
/// `pam_login_keeping_fail_delay` leaves libpam's own wait in place.
pub fn pam_login_as(
    confdir: &Path,
    service: &str,
    user: Option<&str>,
    items: &Items,
    script: &mut Script,
) -> i32 {
    pam_login_inner(confdir, service, user, items, script, false)
}

/// `pam_login` with libpam's own delay after a failure (what the modules asked for with
/// `pam_fail_delay`), as pamtester, su and sudo have it.
pub fn pam_login_keeping_fail_delay(
    confdir: &Path,
    service: &str,
    user: &str,
    items: &Items,
    script: &mut Script,
) -> i32 {
    pam_login_inner(confdir, service, Some(user), items, script, true)
}

/// Takes libpam's wait after a login over, records it, and waits not at all.
extern "C" fn no_fail_delay(retval: c_int, usec: libc::c_uint, appdata: *mut c_void) {
    // SAFETY: libpam passes the conversation's appdata: our own Script.
    let script = unsafe { &mut *(appdata as *mut Script) };
    script.fail_delay = Some((retval, usec));
}

fn pam_login_inner(
    confdir: &Path,
    service: &str,
    user: Option<&str>,
    items: &Items,
    script: &mut Script,
    keep_fail_delay: bool,
) -> i32 {
    let service = CString::new(service).unwrap();
    let user = user.map(|u| CString::new(u).unwrap());
    let confdir = CString::new(confdir.as_os_str().as_encoded_bytes()).unwrap();
    let conv = PamConv {
        conv: Some(scripted_conv),
        appdata_ptr: script as *mut Script as *mut c_void,
    };
    let mut pamh: *mut c_void = std::ptr::null_mut();
    let rc = unsafe {
        pam_start_confdir(
            service.as_ptr(),
            user.as_ref().map_or(std::ptr::null(), |u| u.as_ptr()),
            &conv,
            confdir.as_ptr(),
            &mut pamh,
        )
    };
    assert_eq!(rc, PAM_SUCCESS, "pam_start_confdir failed");
    for (kind, value) in [
        (PAM_RHOST, &items.rhost),
        (PAM_TTY, &items.tty),
        (PAM_RUSER, &items.ruser),
    ] {
        if let Some(v) = value {
            let v = CString::new(v.as_str()).unwrap();
            assert_eq!(
                unsafe { pam_set_item(pamh, kind, v.as_ptr() as *const c_void) },
                PAM_SUCCESS
            );
        }
    }
    if !keep_fail_delay {
        let delay: extern "C" fn(c_int, libc::c_uint, *mut c_void) = no_fail_delay;
        assert_eq!(
            unsafe { pam_set_item(pamh, PAM_FAIL_DELAY, delay as *const c_void) },
            PAM_SUCCESS
        );
    }
    let rc = unsafe { pam_authenticate(pamh, 0) };
    unsafe { pam_end(pamh, rc) };
    rc
}

/// The module as cargo built it for these tests, or the one `PAM_TRUID_MODULE` names
/// (tests/packages.sh: the module the .deb installed).
pub fn module_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PAM_TRUID_MODULE").filter(|p| !p.is_empty()) {
        let so = PathBuf::from(p);
        assert!(so.is_file(), "PAM_TRUID_MODULE={} is missing", so.display());
        return so;
    }
    // `cargo test` builds the cdylib fresh into deps/ (it only copies it up on `cargo build`).
    let exe = std::env::current_exe().unwrap();
    let so = exe.parent().unwrap().join("libpam_truid.so");
    assert!(
        so.exists(),
        "{} is missing: build with cargo test",
        so.display()
    );
    so
}

/// A syslog socket the module logs to (module argument `syslog_socket=`).
pub struct SyslogSink {
    pub path: PathBuf,
    sock: UnixDatagram,
}

impl SyslogSink {
    pub fn new(dir: &Path) -> SyslogSink {
        let path = dir.join("log.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        SyslogSink { path, sock }
    }

    /// Every line received so far. The module writes before `pam_authenticate` returns, so
    /// what a login logged is already here when the test reads.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = self.sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }
}

/// A test's world: a folder, the emulator, a config, a PAM stack, a syslog listener.
pub struct World {
    pub dir: tempfile::TempDir,
    pub emu: Emulator,
    pub log: SyslogSink,
}

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests run the module as PAM does, which needs root (config files must be root-owned): run them as root, e.g. sudo .ci/run"
    );
}

impl World {
    pub fn new() -> World {
        World::with_options(Options::default())
    }

    pub fn with_options(opts: Options) -> World {
        require_root();
        test_users_known();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let emu = Emulator::start(opts).unwrap();
        let log = SyslogSink::new(dir.path());
        World { dir, emu, log }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The `[api]` table for this emulator; the token cache lives in the test's folder.
    /// The emulator listens on a loopback port anyone may bind; the tests vouch for it, so
    /// that `failmode = "safe"` is tested as on a host whose endpoint no local user can hold
    /// (tests/pam_module.rs checks what happens without it).
    pub fn api_table(&self) -> String {
        let i = self.emu.info();
        format!(
            "[api]\nbase_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\nca_file = \"{}\"\nroots = \"none\"\ntimeout = 5\ntoken_cache = \"{}\"\nagent = \"\"\n{}",
            i.base_url,
            i.client_id,
            i.client_secret,
            i.ca_file.as_deref().unwrap_or(""),
            self.path("cache").display(),
            TRUST_LOOPBACK
        )
    }

    /// Writes `pam_truid.toml` (root-owned, 0600) and returns its path.
    pub fn write_config(&self, text: &str) -> PathBuf {
        let p = self.path("pam_truid.toml");
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    /// A config with the emulator's `[api]`, the given `[login]` lines and `[users]`.
    pub fn config(&self, login: &str, users: &[(&str, &str)]) -> PathBuf {
        let mut text = self.api_table();
        text.push_str("\n[login]\n");
        text.push_str(login);
        text.push_str("\n\n[users]\n");
        for (u, f) in users {
            text.push_str(&format!("{u} = \"{f}\"\n"));
        }
        self.write_config(&text)
    }

    /// A PAM stack folder with service `svc` holding `lines` (use `{module}` and `{args}`).
    pub fn stack(&self, lines: &str) -> PathBuf {
        let d = self.path("pam.d");
        std::fs::create_dir_all(&d).unwrap();
        let text = lines
            .replace("{module}", module_path().to_str().unwrap())
            .replace(
                "{args}",
                &format!(
                    "config={} syslog_socket={}",
                    self.path("pam_truid.toml").display(),
                    self.log.path.display()
                ),
            );
        std::fs::write(d.join("svc"), text).unwrap();
        d
    }

    /// The usual stack: the module alone, `required`.
    pub fn module_stack(&self) -> PathBuf {
        self.stack("auth required {module} {args}\n")
    }

    /// Logs in through real libpam; returns the PAM result and what the person saw.
    pub fn login(&self, user: &str, answers: &[&str]) -> (i32, Script) {
        self.login_typing(user, answers, Duration::ZERO)
    }

    /// `login` by a person who takes `typing` over each code.
    pub fn login_typing(&self, user: &str, answers: &[&str], typing: Duration) -> (i32, Script) {
        let mut s = Script::answering(answers);
        s.typing = typing;
        let rc = pam_login(
            &self.path("pam.d"),
            "svc",
            user,
            &Items {
                rhost: Some("198.51.100.9".into()),
                ..Default::default()
            },
            &mut s,
        );
        (rc, s)
    }

    /// A factor at the emulator, ACTIVE, and its code now.
    pub fn enroll(&self, user: &str) -> String {
        self.emu.seed_factor(user, FactorType::Totp).factor_id
    }

    pub fn code(&self, factor: &str) -> String {
        self.emu.code(factor, 0).unwrap()
    }

    /// A well-formed code that none of the factor's currently valid codes (drift included) is.
    pub fn wrong_code(&self, factor: &str) -> String {
        let valid: Vec<String> = (-1..=2).filter_map(|o| self.emu.code(factor, o)).collect();
        ["000000", "111111", "222222", "333333", "444444"]
            .iter()
            .find(|c| !valid.iter().any(|v| v == *c))
            .unwrap()
            .to_string()
    }

    /// The outcome lines logged so far.
    pub fn outcomes(&self) -> Vec<String> {
        self.log
            .lines()
            .into_iter()
            .filter(|l| l.contains("outcome="))
            .collect()
    }
}

/// The names the tests log in as. The module asks NSS about every user (`getpwnam`) and
/// denies a name it does not know, so they must exist: `test_users_known` adds them to a
/// private `/etc` of the test's thread, never to the host's.
pub fn test_user_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "alice", "bob", "carol", "dave", "erin", "frank", "gina", "hana", "ivan", "judy", "kim",
        "lee", "lena", "mallory", "max", "ned", "oli",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    names.extend((0..256).map(|i| format!("u{i}")));
    names.extend((0..100).map(|i| format!("user{i}")));
    names
}

/// The line with which a test's `[api]` vouches that only its emulator can hold its loopback
/// port (see `api_table`).
pub const TRUST_LOOPBACK: &str = "trust_loopback_port = true\n";

/// The GID of the tests' users' group (`truid-tests`), far from any distribution's range.
pub const TEST_GID: u32 = 64000;

thread_local! {
    /// The overlay's folders, kept while the thread (and so its mount namespace) lives.
    static PRIVATE_ETC: std::cell::RefCell<Option<tempfile::TempDir>> = const { std::cell::RefCell::new(None) };
}

/// Makes `test_user_names()` known to NSS without touching the host's accounts.
///
/// Inside `tests/private-host.sh` (`TRUID_PRIVATE_HOST` set: /etc is already a private copy)
/// they are added to that copy's passwd and group, once per process. Otherwise the calling
/// thread (and every thread and process it starts) gets its own mount namespace with an
/// overlay on `/etc` whose passwd and group also hold them; anything the test writes to `/etc`
/// stays in the overlay, and useradd's home folders go to a folder of the thread's own. Once
/// per thread.
pub fn test_users_known() {
    if std::env::var_os("TRUID_PRIVATE_HOST").is_some() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // lckpwdf: the lock useradd takes, so a test's useradd cannot interleave.
            // SAFETY: plain libc calls.
            assert_eq!(unsafe { lckpwdf() }, 0, "lckpwdf");
            add_test_users();
            unsafe { ulckpwdf() };
        });
        return;
    }
    if PRIVATE_ETC.with(|p| p.borrow().is_some()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (upper, work) = (dir.path().join("upper"), dir.path().join("work"));
    std::fs::create_dir(&upper).unwrap();
    std::fs::create_dir(&work).unwrap();
    let c = |s: &str| CString::new(s).unwrap();
    // Whiteouts (0:0 character devices) for the shadow tools' lock and backup files: a useradd
    // on the host at the same moment must not be seen as holding this overlay's lock.
    for name in ["passwd", "group", "shadow", "gshadow", "subuid", "subgid"] {
        for suffix in [".lock", "+", "-"] {
            let p = c(&upper.join(format!("{name}{suffix}")).to_string_lossy());
            // SAFETY: mknod on a valid path.
            assert_eq!(
                unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR, 0) },
                0,
                "mknod"
            );
        }
    }
    let p = c(&upper.join(".pwd.lock").to_string_lossy());
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR, 0) },
        0,
        "mknod"
    );
    // SAFETY: plain syscalls on valid C strings. CLONE_NEWNS is per thread (it unshares the
    // thread's fs too), and the private propagation keeps the overlay from the host.
    unsafe {
        assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare(CLONE_NEWNS)");
        assert_eq!(
            libc::mount(
                c("none").as_ptr(),
                c("/").as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            0,
            "mount --make-rprivate /"
        );
        let opts = c(&format!(
            "lowerdir=/etc,upperdir={},workdir={}",
            upper.display(),
            work.display()
        ));
        assert_eq!(
            libc::mount(
                c("overlay").as_ptr(),
                c("/etc").as_ptr(),
                c("overlay").as_ptr(),
                0,
                opts.as_ptr() as *const c_void
            ),
            0,
            "overlay on /etc: {}",
            std::io::Error::last_os_error()
        );
    }
    add_test_users();
    // Home folders useradd -m makes go to this thread's folder too, not the host's /home.
    let homes = dir.path().join("home");
    std::fs::create_dir(&homes).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&homes, std::fs::Permissions::from_mode(0o755)).unwrap();
    if std::path::Path::new("/etc/default/useradd").exists() {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open("/etc/default/useradd")
            .unwrap();
        // The last HOME= line wins.
        writeln!(f, "\nHOME={}", homes.display()).unwrap();
    }
    PRIVATE_ETC.with(|p| *p.borrow_mut() = Some(dir));
}

/// Appends the test users missing from /etc/passwd (and their group) to /etc of this mount
/// namespace, which must be a private one.
fn add_test_users() {
    let append = |file: &str, text: String| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(file).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let mut lines = String::new();
    for (i, name) in test_user_names().iter().enumerate() {
        if !passwd
            .lines()
            .any(|l| l.split(':').next() == Some(name.as_str()))
        {
            lines.push_str(&format!(
                "{name}:x:{}:{TEST_GID}:pam_truid test:/nonexistent:/usr/sbin/nologin\n",
                TEST_GID + 1 + i as u32
            ));
        }
    }
    append("/etc/passwd", lines);
    let group = std::fs::read_to_string("/etc/group").unwrap();
    if !group.lines().any(|l| l.starts_with("truid-tests:")) {
        append("/etc/group", format!("truid-tests:x:{TEST_GID}:\n"));
    }
}

/// Runs `f` and returns how long it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed())
}
