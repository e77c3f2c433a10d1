//! `truid-emulator`: runs the tru.ID API stand-in until SIGTERM or SIGINT.
//! Prints one JSON line on stdout when ready; logs go to stderr.

use nix::sys::signal::{SigSet, Signal};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use truid_emulator::{Emulator, Fault, FaultKind, Options, Route};

const HELP: &str = "\
truid-emulator: a local stand-in for the tru.ID API (token, Authenticator, console
project configuration, PhoneCheck, challenge callbacks), for tests, demos and offline work.

When ready it prints ONE JSON line on stdout:
  {\"base_url\",\"ca_file\",\"client_id\",\"client_secret\",\"workspace_id\",\"project_id\",
   \"workspace_client_id\",\"workspace_client_secret\"}
then serves until SIGTERM or SIGINT (exit status 0). Logs go to stderr.

USAGE: truid-emulator [FLAGS]

  --listen ADDR                  address to listen on (default 127.0.0.1:0, a free port)
  --no-tls                       serve plain HTTP (default: HTTPS with a generated CA)
  --cert-dir DIR                 write ca.pem, server.pem, server.key here
                                 (default: a temporary folder removed at exit)
  --state-file FILE              load state from FILE at start, write it atomically
                                 after every change (survives restarts)
  --client-id ID                 project client id (generated when absent)
  --client-secret SECRET         project client secret (generated when absent)
  --workspace-id ID              workspace id (generated when absent)
  --project-id ID                project id (generated when absent)
  --workspace-client-id ID       workspace client id, for scope console (generated)
  --workspace-client-secret S    workspace client secret (generated when absent)
  --issuer-name NAME             initial issuer_name of the project (default
                                 \"pam_truid emulator\")
  --token-ttl SECS               access token lifetime, expires_in (default 3600)
  --challenge-ttl SECS           challenge lifetime before EXPIRED (default 300)
  --rate-limit N                 requests per minute before 429 (default 100000)
  --push-auto approve|deny       act as the phone: resolve every PUSH challenge
  --push-delay-ms MS             ... after this delay (default 1000)
  --latency-ms MS                add this latency to every API request
  --idle-close SECS              close a kept-alive connection after SECS without a
                                 request, as front ends do (default: never)
  --fault JSON                   add a fault (repeatable), same JSON as
                                 POST /_emulator/faults, e.g.
                                 '{\"route\":\"token\",\"kind\":\"status\",\"status\":503,\"times\":1}'
                                 kinds: latency(ms) status(status) too_many_requests
                                 (retry_after) not_json wrong_shape huge(bytes) drop
                                 drop_mid_body hang_mid_body hang unauthorized
  -h, --help                     this text

Control endpoints (no auth, not rate limited, never faulted):
  POST   /_emulator/faults                 add a fault (JSON as --fault)
  GET    /_emulator/faults                 list faults
  DELETE /_emulator/faults                 clear faults
  GET    /_emulator/factors/{id}/code?offset=N          -> {\"code\":\"123456\"}
  POST   /_emulator/factors/{id}/challenges/{cid}/approve   (or /deny): act as the phone
  POST   /_emulator/seed {\"external_user_id\",\"type\":\"TOTP\"|\"PUSH\"} -> {\"factor_id\",\"secret\"}
  GET    /_emulator/stats                  counters
  POST   /_emulator/tokens/revoke          every issued token answers 401 from now on
  GET    /_emulator/challenges             recent challenges (factor_id, reference_id, status)
  GET    /_emulator/info                   the ready line again
";

fn parse(args: Vec<String>) -> Result<Option<Options>, String> {
    let mut o = Options::default();
    let mut push_auto: Option<bool> = None;
    let mut push_delay = Duration::from_millis(1000);
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (flag, None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it.next().ok_or_else(|| format!("{name} needs a value")),
            }
        };
        let num = |name: &str, v: String| -> Result<u64, String> {
            v.parse::<u64>()
                .map_err(|_| format!("{name}: not a number: {v:?}"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => {
                let v = value("--listen")?;
                o.listen = v
                    .parse::<SocketAddr>()
                    .map_err(|e| format!("--listen {v:?}: {e}"))?;
            }
            "--no-tls" => o.tls = false,
            "--cert-dir" => o.cert_dir = Some(PathBuf::from(value("--cert-dir")?)),
            "--state-file" => o.state_file = Some(PathBuf::from(value("--state-file")?)),
            "--client-id" => o.client_id = Some(value("--client-id")?),
            "--client-secret" => o.client_secret = Some(value("--client-secret")?),
            "--workspace-id" => o.workspace_id = Some(value("--workspace-id")?),
            "--project-id" => o.project_id = Some(value("--project-id")?),
            "--workspace-client-id" => {
                o.workspace_client_id = Some(value("--workspace-client-id")?)
            }
            "--workspace-client-secret" => {
                o.workspace_client_secret = Some(value("--workspace-client-secret")?)
            }
            "--issuer-name" => o.issuer_name = value("--issuer-name")?,
            "--token-ttl" => {
                o.token_ttl = Duration::from_secs(num("--token-ttl", value("--token-ttl")?)?)
            }
            "--challenge-ttl" => {
                o.challenge_ttl =
                    Duration::from_secs(num("--challenge-ttl", value("--challenge-ttl")?)?)
            }
            "--rate-limit" => {
                let n = num("--rate-limit", value("--rate-limit")?)?;
                o.rate_limit = u32::try_from(n).map_err(|_| "--rate-limit too large")?;
            }
            "--push-auto" => {
                push_auto = Some(match value("--push-auto")?.as_str() {
                    "approve" => true,
                    "deny" => false,
                    other => return Err(format!("--push-auto: approve or deny, not {other:?}")),
                })
            }
            "--push-delay-ms" => {
                push_delay =
                    Duration::from_millis(num("--push-delay-ms", value("--push-delay-ms")?)?)
            }
            "--idle-close" => {
                o.idle_close = Some(Duration::from_secs(num(
                    "--idle-close",
                    value("--idle-close")?,
                )?))
            }
            "--latency-ms" => {
                let ms = num("--latency-ms", value("--latency-ms")?)?;
                o.faults.push(Fault {
                    route: Route::Any,
                    kind: FaultKind::Latency(Duration::from_millis(ms)),
                    times: None,
                });
            }
            "--fault" => {
                let v = value("--fault")?;
                let f: Fault =
                    serde_json::from_str(&v).map_err(|e| format!("--fault {v:?}: {e}"))?;
                o.faults.push(f);
            }
            other => return Err(format!("unknown flag {other:?} (see --help)")),
        }
    }
    o.push_auto = push_auto.map(|a| (push_delay, a));
    Ok(Some(o))
}

fn main() -> ExitCode {
    let opts = match parse(std::env::args().skip(1).collect()) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("truid-emulator: {e}");
            return ExitCode::from(2);
        }
    };
    // SIGTERM and SIGINT are blocked before any thread starts (threads inherit the mask) and
    // taken with sigwait below: no signal handler, and no tokio "signal" driver, whose
    // process-wide socket pair would leak into the module's tokio through Cargo's feature
    // unification in test builds.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(e) = signals.thread_block() {
        eprintln!("truid-emulator: signals: {e}");
        return ExitCode::FAILURE;
    }
    let emu = match Emulator::start(opts) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("truid-emulator: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let line = match serde_json::to_string(emu.info()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("truid-emulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    {
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            eprintln!("truid-emulator: cannot write the ready line");
            return ExitCode::FAILURE;
        }
    }
    eprintln!("truid-emulator: listening on {}", emu.info().base_url);
    if let Err(e) = signals.wait() {
        eprintln!("truid-emulator: signals: {e}");
    }
    eprintln!("truid-emulator: stopping");
    emu.shutdown();
    ExitCode::SUCCESS
}
