//! The agent's public socket as the tests reach it: the agent serving users, and a raw caller
//! with a user's credentials (socat run as that uid, so the agent's SO_PEERCRED sees it).

use super::daemon::{start_agent_serving_users, Daemon};
use super::World;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

pub fn uid_of(user: &str) -> u32 {
    nix::unistd::User::from_name(user)
        .unwrap()
        .unwrap_or_else(|| panic!("{user} is not known"))
        .uid
        .as_raw()
}

/// The agent serving users on `w.path("pub/agent.sock")` with `config`, its outcome lines
/// going to the world's syslog listener (which users may write to, as /dev/log).
pub struct Agent {
    pub public: PathBuf,
    _daemon: Daemon,
}

pub fn agent(w: &World, config: &Path) -> Agent {
    std::fs::set_permissions(&w.log.path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let public = w.path("pub/agent.sock");
    let daemon =
        start_agent_serving_users(&w.path("root/agent.sock"), &public, config, &w.log.path);
    Agent {
        public,
        _daemon: daemon,
    }
}

/// A raw caller of the public socket with `uid`'s credentials (socat run as that uid).
pub struct Caller {
    pub child: Child,
    pub input: ChildStdin,
    /// The agent's lines, read by a thread of their own so that a silent agent cannot hang
    /// the test.
    lines: std::sync::mpsc::Receiver<String>,
}

/// How long a caller waits for the agent's next line before it counts as never coming.
pub const LINE_WAIT: Duration = Duration::from_secs(20);

impl Caller {
    pub fn connect(uid: u32, socket: &Path) -> Caller {
        let mut child = Command::new("socat")
            .arg("-")
            .arg(format!("UNIX-CONNECT:{}", socket.display()))
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || read_lines(output, tx));
        Caller {
            child,
            input,
            lines,
        }
    }

    pub fn send(&mut self, line: &str) {
        self.input.write_all(line.as_bytes()).unwrap();
        self.input.write_all(b"\n").unwrap();
        self.input.flush().unwrap();
    }

    /// The agent's next line; `None` once it closed the connection or said nothing for
    /// `LINE_WAIT`.
    pub fn next(&mut self) -> Option<serde_json::Value> {
        let line = self.lines.recv_timeout(LINE_WAIT).ok()?;
        Some(serde_json::from_str(&line).unwrap())
    }

    /// Lines until `{"done": ...}` (included), or until the agent closes.
    pub fn rest(&mut self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while let Some(v) = self.next() {
            let done = v.get("done").is_some();
            out.push(v);
            if done {
                break;
            }
        }
        out
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lines(mut output: BufReader<ChildStdout>, tx: std::sync::mpsc::Sender<String>) {
    let mut line = String::new();
    while matches!(output.read_line(&mut line), Ok(n) if n > 0) {
        if tx.send(std::mem::take(&mut line)).is_err() {
            return;
        }
    }
}
