//! Daemons the tests start (the agent above all), each ended by its PID when the test ends.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const CLI: &str = env!("CARGO_BIN_EXE_truid-pam");

/// A process this test started, killed by its PID when the test ends, pass or fail.
pub struct Daemon {
    pub child: Child,
    /// Its stdout after the ready line, when that is where it said it.
    /// The stream it said "ready" on, read on from there.
    pub out: Box<dyn BufRead>,
}

impl Daemon {
    /// Starts `cmd` and waits for `ready` on the stream it prints it to (no sleeping).
    pub fn start(mut cmd: Command, ready: &str, on_stderr: bool) -> Daemon {
        // The stream that says "ready" is read; the other goes to the test's own output.
        if on_stderr {
            cmd.stdout(Stdio::inherit()).stderr(Stdio::piped());
        } else {
            cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        }
        let mut child = cmd.stdin(Stdio::null()).spawn().unwrap();
        let mut out: Box<dyn BufRead> = if on_stderr {
            Box::new(BufReader::new(child.stderr.take().unwrap()))
        } else {
            Box::new(BufReader::new(child.stdout.take().unwrap()))
        };
        let line = read_until(&mut out, ready);
        let mut d = Daemon { child, out };
        if line.is_none() {
            d.stop();
            panic!("{cmd:?} never said {ready:?}");
        }
        d
    }

    /// Waits for a line holding `want` on the stream it said "ready" on.
    pub fn said(&mut self, want: &str) -> bool {
        read_until(&mut self.out, want).is_some()
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&mut self, s: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let _ = nix::sys::signal::kill(self.pid(), s);
        self.child.wait().unwrap()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn read_until(r: &mut impl BufRead, want: &str) -> Option<String> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line.contains(want) {
            return Some(line);
        }
    }
}

pub fn start_agent(socket: &Path) -> Daemon {
    let mut cmd = Command::new(CLI);
    cmd.args(["agent", "--workers", "4", "--socket"])
        .arg(socket);
    Daemon::start(cmd, "listening on", false)
}

/// The agent with its public socket too (unprivileged callers), reading `config` for them and
/// logging their outcomes to the syslog socket `log`.
pub fn start_agent_serving_users(
    socket: &Path,
    public: &Path,
    config: &Path,
    log: &Path,
) -> Daemon {
    let mut cmd = Command::new(CLI);
    cmd.arg("--config")
        .arg(config)
        .args(["agent", "--workers", "4", "--socket"])
        .arg(socket)
        .arg("--public-socket")
        .arg(public)
        .arg("--syslog-socket")
        .arg(log);
    Daemon::start(cmd, "listening on", false)
}
