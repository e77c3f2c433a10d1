//! `truid-pam check`: every thing the module will need, checked now, one line each.

use crate::Failure;
use pam_truid::api::{client_config, Client};
use pam_truid::config::Config;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Serialize)]
struct Item {
    check: String,
    ok: bool,
    /// Ok, yet something to change (`WARN`): the exit status stays 0.
    warning: bool,
    detail: String,
}

pub fn run(path: &Path, json: bool) -> Result<ExitCode, Failure> {
    let mut items = Vec::new();
    let mut add = |check: &str, result: Result<String, String>| {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        items.push(Item {
            check: check.into(),
            ok,
            warning: false,
            detail,
        });
    };
    // Lines that may be warnings: the public socket's, then rolling out without lockouts.
    let mut verdicts = Vec::new();
    match Config::load(path) {
        Err(e) => {
            add("config", Err(format!("{e}")));
            add("selinux", crate::selinux::state(None));
        }
        Ok(cfg) => {
            add(
                "config",
                Ok(format!(
                    "{}: owner, mode and every key valid; {} user(s)",
                    path.display(),
                    cfg.users.len()
                )),
            );
            check_api(&cfg, &mut add);
            add("agent", Ok(agent_state(&cfg)));
            add("direct client", direct_library_state());
            add("selinux", crate::selinux::state(Some(&cfg)));
            verdicts.push(("public socket".into(), public_socket_state(&cfg)));
            verdicts.extend(crate::rollout_check::items(&cfg));
        }
    }
    for (check, v) in verdicts {
        use crate::rollout_check::Verdict;
        let (ok, warning, detail) = match v {
            Verdict::Ok(d) => (true, false, d),
            Verdict::Warn(d) => (true, true, d),
            Verdict::Fail(d) => (false, false, d),
        };
        items.push(Item {
            check,
            ok,
            warning,
            detail,
        });
    }
    let all_ok = items.iter().all(|i| i.ok);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&items).map_err(|e| Failure(e.to_string()))?
        );
    } else {
        for i in &items {
            println!(
                "{} {}: {}",
                match (i.ok, i.warning) {
                    (false, _) => "FAIL",
                    (true, true) => "WARN",
                    (true, false) => "ok  ",
                },
                i.check,
                i.detail
            );
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn check_api(cfg: &Config, add: &mut impl FnMut(&str, Result<String, String>)) {
    if let Err(e) = client_config(cfg.api.roots, cfg.api.ca_file.as_deref(), None) {
        add("tls", Err(e));
        return;
    }
    add(
        "tls",
        Ok(format!(
            "trust roots {:?}{}",
            cfg.api.roots,
            cfg.api
                .ca_file
                .as_ref()
                .map(|c| format!(" + {}", c.display()))
                .unwrap_or_default()
        )),
    );
    // No token cache: check must prove the credentials work now, not reuse an old token.
    let mut api_cfg = cfg.api.clone();
    api_cfg.token_cache = None;
    let mut api = match Client::new(&api_cfg) {
        Ok(c) => c,
        Err(e) => return add("api", Err(e)),
    };
    // Token and reachability in one: a search for a user name no one has.
    match api.search_factors("truid-pam-check") {
        Ok(_) => add(
            "api",
            Ok(format!("{} reachable, token accepted", cfg.api.base_url)),
        ),
        Err(e) => {
            return add(
                "api",
                Err(format!(
                    "{e} (base URL {}; check the network, [api] client_id and client_secret)",
                    cfg.api.base_url
                )),
            )
        }
    }
    for (user, factor) in &cfg.users {
        let result = match api.get_factor(factor.as_str()) {
            Ok(f) if f.status == "ACTIVE" => Ok(format!("{factor} ACTIVE")),
            Ok(f) => Err(format!(
                "{factor} is {}: the user cannot log in; run truid-pam enroll {user} --force",
                pam_truid::text::sanitize(&f.status, 16)
            )),
            Err(e) => Err(format!(
                "{factor}: {e}; run truid-pam enroll {user} --force"
            )),
        };
        add(&format!("user {user}"), result);
    }
}

/// The direct client library beside each module installed in the usual PAM folders: logins
/// that find no agent need it, and the module loads it only under the checks it passes here.
fn direct_library_state() -> Result<String, String> {
    let mut folders = vec![
        PathBuf::from("/usr/lib64/security"),
        PathBuf::from("/lib64/security"),
        PathBuf::from("/usr/lib/security"),
        PathBuf::from("/lib/security"),
    ];
    for root in ["/usr/lib", "/lib"] {
        if let Ok(entries) = std::fs::read_dir(root) {
            folders.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with("-linux-gnu"))
                    .map(|e| e.path().join("security")),
            );
        }
    }
    let mut seen = Vec::new();
    let mut checked = Vec::new();
    for folder in folders {
        if !folder.join("pam_truid.so").is_file() {
            continue;
        }
        // /lib may be a link to /usr/lib: one folder, seen twice.
        let real = std::fs::canonicalize(&folder).unwrap_or_else(|_| folder.clone());
        if seen.contains(&real) {
            continue;
        }
        let library = folder.join(pam_truid::agent::direct::LIBRARY_NAME);
        pam_truid::agent::direct::check_library(&library).map_err(|e| {
            format!("{e}: logins that find no agent are denied; reinstall the package")
        })?;
        seen.push(real);
        checked.push(library);
    }
    Ok(if checked.is_empty() {
        "no pam_truid.so in the usual PAM folders (a build not installed from the packages): \
         not checked"
            .into()
    } else {
        let shown: Vec<String> = checked.iter().map(|p| p.display().to_string()).collect();
        format!(
            "{}: root's, writable by root alone; logins that find no agent load it",
            shown.join(", ")
        )
    })
}

/// Whether logins will go through a local agent. Informational: without one they go direct.
fn agent_state(cfg: &Config) -> String {
    match cfg.api.agent.as_deref() {
        None => "off ([api] agent = \"\"): logins go to tru.ID directly".into(),
        Some(sock) => match pam_truid::agent::client::connect(sock) {
            Some(_) => format!("{}: root's agent listens; logins go through it", sock.display()),
            None => format!(
                "none listens at {}: logins go to tru.ID directly, a TLS handshake each (for faster logins: systemctl enable --now pam_truid-agent)",
                sock.display()
            ),
        },
    }
}

/// The agent's public socket, where programs run as a user reach it. A warning when something
/// configured needs it and nothing of root's serves it.
fn public_socket_state(cfg: &Config) -> crate::rollout_check::Verdict {
    use crate::rollout_check::Verdict;
    let sock = Path::new(pam_truid::config::DEFAULT_PUBLIC_SOCKET);
    if pam_truid::agent::client::connect(sock).is_some() {
        return Verdict::Ok(format!(
            "{}: root's agent serves users (screen lockers, truid-pam enroll by a user)",
            sock.display()
        ));
    }
    let mut needs = Vec::new();
    if cfg.enroll.self_service {
        needs.push("[enroll] self = true (truid-pam enroll by a user)".to_string());
    }
    // Screen lockers run the module as the user, and most include the shared stack.
    let shared = ["/etc/pam.d/common-auth", "/etc/pam.d/system-auth"];
    if let Some(stack) = shared.iter().find(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines()
                .any(|l| l.split('#').next().unwrap_or("").contains("pam_truid.so"))
        })
    }) {
        needs.push(format!(
            "screen lockers, which run the module as the user ({stack} names pam_truid.so)"
        ));
    }
    if needs.is_empty() {
        Verdict::Ok(format!(
            "no agent of root's serves {}: only programs run as a user need it (screen lockers, truid-pam enroll by a user)",
            sock.display()
        ))
    } else {
        Verdict::Warn(format!(
            "no agent of root's serves {}, which {} need: they are refused until one does (systemctl enable --now pam_truid-agent; its unit gives --public-socket)",
            sock.display(),
            needs.join(" and ")
        ))
    }
}
