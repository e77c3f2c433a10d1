//! The terminal side: reading a line (without echo for codes) and the CLI's `Conversation`.

use pam_truid::flow::{ConvError, Conversation};
use pam_truid::secret::Secret;
use std::io::{BufRead, IsTerminal, Write};

/// Reads one line from standard input; with `hidden`, and a terminal, without echo.
pub fn read_line(prompt: &str, hidden: bool) -> std::io::Result<Secret> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    if tty {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
    }
    let saved = if hidden && tty {
        echo_off(&stdin)
    } else {
        None
    };
    let mut line = zeroize::Zeroizing::new(String::new());
    let read = stdin.lock().read_line(&mut line);
    if let Some(t) = saved {
        let _ = nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &t);
        eprintln!();
    }
    if read? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "no more input",
        ));
    }
    Ok(Secret::new(line.trim_end_matches(['\n', '\r'])))
}

fn echo_off(stdin: &std::io::Stdin) -> Option<nix::sys::termios::Termios> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let saved = tcgetattr(stdin).ok()?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(stdin, SetArg::TCSANOW, &quiet).ok()?;
    Some(saved)
}

/// The login flow's conversation on this terminal, as `truid-pam test` runs it.
pub struct TerminalConv;

impl Conversation for TerminalConv {
    fn prompt_secret(&mut self, text: &str) -> Result<Secret, ConvError> {
        if !std::io::stdin().is_terminal() {
            // Show the prompt even when the answer comes from a pipe.
            eprintln!("{text}");
        }
        read_line(text, true).map_err(|e| ConvError(format!("cannot read the code: {e}")))
    }

    fn prompt_echo(&mut self, text: &str) -> Result<Secret, ConvError> {
        if !std::io::stdin().is_terminal() {
            eprintln!("{text}");
        }
        read_line(text, false).map_err(|e| ConvError(format!("cannot read the answer: {e}")))
    }

    fn info(&mut self, text: &str) {
        eprintln!("{text}");
    }

    fn error(&mut self, text: &str) {
        eprintln!("{text}");
    }
}
