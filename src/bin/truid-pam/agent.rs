//! `truid-pam agent`: the local agent's socket, workers and signals. What a call does is
//! `pam_truid::agent::serving`'s; this file only listens.

use crate::Failure;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::stat::{umask, Mode};
use pam_truid::agent::services::Services;
use pam_truid::agent::serving::{serve, Projects};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// The socket to listen on: the path the modules' [api] agent names.
    #[arg(long, default_value = pam_truid::config::DEFAULT_AGENT_SOCKET, value_name = "PATH")]
    socket: std::path::PathBuf,
    /// Calls served at once; more wait in the socket's queue.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: u16,
    /// Also serve unprivileged callers (screen lockers, `truid-pam enroll` by a user) on this
    /// socket, each for their own account only, with the settings of --config. The unit gives
    /// /run/pam_truid-public/agent.sock, where the module run without root looks.
    #[arg(long, value_name = "PATH")]
    public_socket: Option<std::path::PathBuf>,
    /// The syslog socket the public socket's outcome lines go to (one per request).
    #[arg(long, value_name = "PATH", default_value = "/dev/log")]
    syslog_socket: std::path::PathBuf,
}

pub fn run(args: Args, config: &Path) -> Result<ExitCode, Failure> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Failure(
            "the agent must run as root: it reads the root-only token cache and serves root's PAM modules (run it from systemd: systemctl enable --now pam_truid-agent)".into(),
        ));
    }
    keep_secrets_in()?;
    let socket = args.socket.as_path();
    let listener = bind(socket, false)?;
    let inode = std::fs::symlink_metadata(socket).map(|m| m.ino()).ok();
    let public = match args.public_socket.as_deref() {
        None => None,
        Some(path) => {
            let listener = bind(path, true)?;
            let inode = std::fs::symlink_metadata(path).map(|m| m.ino()).ok();
            Some((path, listener, inode))
        }
    };
    // Signals go to the main thread's sigwait only: the workers never see them.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals
        .thread_block()
        .map_err(|e| Failure(format!("cannot block signals: {e}")))?;
    let projects = Arc::new(Projects::new().map_err(Failure)?);
    {
        let projects = projects.clone();
        std::thread::Builder::new()
            .name("token-refresh".into())
            .spawn(move || projects.refresh_tokens())
            .map_err(|e| Failure(format!("cannot start the token refresher: {e}")))?;
    }
    for _ in 0..args.workers {
        let listener = listener
            .try_clone()
            .map_err(|e| Failure(format!("{}: {e}", socket.display())))?;
        let projects = projects.clone();
        std::thread::spawn(move || work(&listener, &projects));
    }
    if let Some((path, listener, _)) = &public {
        let listener = listener
            .try_clone()
            .map_err(|e| Failure(format!("{}: {e}", path.display())))?;
        let sink = pam_truid::log::Sink::at(&args.syslog_socket);
        let services = Arc::new(Services::new(config.to_path_buf(), sink));
        let projects = projects.clone();
        std::thread::Builder::new()
            .name("public-socket".into())
            .spawn(move || work_public(&listener, &services, &projects))
            .map_err(|e| Failure(format!("cannot start the public socket's thread: {e}")))?;
        println!("truid-pam agent: serving users on {}", path.display());
    }
    println!("truid-pam agent: listening on {}", socket.display());
    let _ = std::io::stdout().flush();
    // SIGHUP, as for most daemons, is a reload: connections, tokens and the trust anchors (CA
    // files re-read) are dropped and made anew on the next call (after a CA or network change).
    // The others stop the agent.
    let signal = loop {
        match signals.wait() {
            Ok(Signal::SIGHUP) => {
                projects.forget();
                pam_truid::api::forget_trust();
                println!("truid-pam agent: SIGHUP: trust anchors re-read, connections and tokens dropped");
                let _ = std::io::stdout().flush();
            }
            other => break other,
        }
    };
    // Only our own sockets: a later agent may already have replaced them (then they are theirs).
    let mut ours = vec![(socket, inode)];
    if let Some((path, _, inode)) = &public {
        ours.push((path, *inode));
    }
    for (path, inode) in ours {
        if inode.is_some() && std::fs::symlink_metadata(path).map(|m| m.ino()).ok() == inode {
            let _ = std::fs::remove_file(path);
        }
    }
    eprintln!(
        "truid-pam agent: stopped by {}",
        signal.map_or("a signal".into(), |s| s.to_string())
    );
    Ok(ExitCode::SUCCESS)
}

/// The agent holds every project's client secret and token: no core dump may write them to
/// disk (RLIMIT_CORE 0, here as well as in the unit, for an agent started by hand), and the
/// process is not dumpable, so that neither a core pipe nor anyone without CAP_SYS_PTRACE can
/// read its memory (/proc/PID/mem, ptrace), even a process of the same uid.
fn keep_secrets_in() -> Result<(), Failure> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // Already 0 under the unit's LimitCORE=0 (whose seccomp filter may refuse setrlimit).
    if getrlimit(Resource::RLIMIT_CORE) != Ok((0, 0)) {
        setrlimit(Resource::RLIMIT_CORE, 0, 0)
            .map_err(|e| Failure(format!("cannot turn core dumps off (RLIMIT_CORE): {e}")))?;
    }
    nix::sys::prctl::set_dumpable(false).map_err(|e| {
        Failure(format!(
            "cannot make the agent non-dumpable (PR_SET_DUMPABLE): {e}"
        ))
    })
}

fn work(listener: &UnixListener, projects: &Projects) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                // A panic in one call (a bug, an answer nobody foresaw) ends that call, whose
                // module then goes direct, not this worker: the agent keeps all its workers.
                let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    serve(stream, projects)
                }));
                match served {
                    Ok(Ok(())) => {}
                    Ok(Err(why)) => eprintln!("truid-pam agent: {why}"),
                    Err(_) => eprintln!("truid-pam agent: a call failed inside the agent (a panic); the module went to tru.ID itself"),
                }
            }
            Err(e) => eprintln!("truid-pam agent: accept failed: {e}"),
        }
    }
}

/// The public socket: a thread per caller, as many as `Services::admit` gives places (a caller
/// waits for a person), and none of them a worker of the root socket.
fn work_public(listener: &UnixListener, services: &Arc<Services>, projects: &Arc<Projects>) {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("truid-pam agent: accept failed on the public socket: {e}");
                continue;
            }
        };
        let place = match services.admit(&stream) {
            Ok(place) => place,
            Err(why) => {
                eprintln!("truid-pam agent: {why}");
                continue;
            }
        };
        let (services, projects) = (services.clone(), projects.clone());
        let spawned = std::thread::Builder::new()
            .name("public-caller".into())
            .spawn(move || {
                let _place = place;
                let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    services.serve(stream, &projects)
                }));
                match served {
                    Ok(Ok(())) => {}
                    Ok(Err(why)) => eprintln!("truid-pam agent: {why}"),
                    Err(_) => eprintln!(
                        "truid-pam agent: a user's request failed inside the agent (a panic)"
                    ),
                }
            });
        if let Err(e) = spawned {
            eprintln!("truid-pam agent: cannot start a thread for a user's request: {e}");
        }
    }
}

/// Binds the socket in a folder only root can write to: mode 0600 for root's modules, or for
/// the public socket 0666 in a folder anyone may enter (each caller is served for its own uid).
fn bind(socket: &Path, public: bool) -> Result<UnixListener, Failure> {
    let fail = |what: String| Failure(format!("{}: {what}", socket.display()));
    let dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| fail("give an absolute path".into()))?;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(dir)
            .map_err(|e| fail(format!("cannot create its folder: {e}")))?;
        let mode = if public { 0o755 } else { 0o700 };
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| fail(e.to_string()))?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(fail(format!(
            "its folder {} must be a folder owned by root and writable by root alone",
            dir.display()
        )));
    }
    match std::fs::symlink_metadata(socket) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(socket).is_ok() {
                return Err(fail(
                    "another agent listens there; stop it first (systemctl stop pam_truid-agent)"
                        .into(),
                ));
            }
            // Left by an agent that did not stop cleanly.
            std::fs::remove_file(socket).map_err(|e| fail(e.to_string()))?;
        }
        Ok(_) => return Err(fail("exists and is not a socket; remove it".into())),
        Err(_) => {}
    }
    // The socket gets its mode from the start: no moment where others could connect to root's.
    let old = umask(Mode::from_bits_truncate(if public { 0o111 } else { 0o177 }));
    let bound = UnixListener::bind(socket);
    umask(old);
    bound.map_err(|e| fail(format!("cannot listen: {e}")))
}
