//! `truid-pam check`'s SELinux line: the mode, whether pam_truid's policy module is loaded,
//! and whether a login on this host can then reach tru.ID (through the agent, or itself
//! with the boolean on). On RHEL and Fedora an enforcing policy without the module denies
//! every login the agent's socket, the caches and the config, whatever the config says.

use pam_truid::config::{Config, Unenrolled};
use std::path::{Path, PathBuf};

/// The boolean that lets the login domains connect to HTTPS themselves (pam_truid.te).
const BOOLEAN: &str = "pam_truid_connect_http";
/// The boolean that lets the login domains rewrite the config (first-login enrolment).
const ENROLL_BOOLEAN: &str = "pam_truid_enroll_at_login";
/// The config's type: the only one the agent and the login domains may replace it as.
const CONF_TYPE: &str = "pam_truid_conf_t";
/// The agent's domain (pam_truid.te): the login domains may connect to this one only.
const AGENT_DOMAIN: &str = "pam_truid_agent_t";
const MODULE_FILE: &str = "/usr/share/selinux/packages/pam_truid.pp";

/// What the host shows; gathered by `observe`, judged by `judge` (which the tests drive).
#[derive(Debug, Default)]
struct Seen {
    /// /sys/fs/selinux/enforce: None when SELinux is not enabled in the running kernel.
    enforcing: Option<bool>,
    /// SELINUX= and SELINUXTYPE= of /etc/selinux/config.
    config_mode: Option<String>,
    config_type: Option<String>,
    /// The module in the policy store (/var/lib/selinux/TYPE/active/modules/*/pam_truid).
    in_store: Option<bool>,
    /// The boolean in the running policy: None when the module is not loaded.
    boolean: Option<bool>,
    /// The agent's socket: None for `[api] agent = ""`; Some(None) when none listens there,
    /// Some(Some(type)) with the SELinux type of the process that does.
    agent: Option<Option<String>>,
    /// `[login] unenrolled = "enroll"`: a login domain rewrites the config.
    enroll_at_login: bool,
    /// `[enroll] self = true`: the agent rewrites the config.
    self_service: bool,
    /// ENROLL_BOOLEAN in the running policy (None: not there, as with an older module).
    enroll_boolean: Option<bool>,
    /// The config or its lock file with another type than CONF_TYPE, and that type.
    mislabelled: Option<(PathBuf, String)>,
}

/// The SELinux line for `cfg` (None: the config could not be read; the default agent socket).
pub fn state(cfg: Option<&Config>) -> Result<String, String> {
    let default = Path::new(pam_truid::config::DEFAULT_AGENT_SOCKET);
    let agent = match cfg {
        Some(c) => c.api.agent.as_deref(),
        None => Some(default),
    };
    let mut seen = observe(agent);
    if let (Some(cfg), Some(_)) = (cfg, seen.boolean) {
        seen.enroll_at_login = cfg.login.unenrolled == Unenrolled::Enroll;
        seen.self_service = cfg.enroll.self_service;
        seen.enroll_boolean = read_boolean(ENROLL_BOOLEAN);
        if seen.enroll_at_login || seen.self_service {
            let lock = cfg.path.with_file_name(format!(
                ".{}.lock",
                cfg.path.file_name().unwrap_or_default().to_string_lossy()
            ));
            seen.mislabelled = [cfg.path.clone(), lock].into_iter().find_map(|p| {
                let t = file_type(&p)?;
                (t != CONF_TYPE).then_some((p, t))
            });
        }
    }
    judge(&seen)
}

/// A boolean of the running policy: "1 1" is the current value, then the pending one.
fn read_boolean(name: &str) -> Option<bool> {
    std::fs::read_to_string(format!("/sys/fs/selinux/booleans/{name}"))
        .ok()
        .map(|s| s.split_whitespace().next() == Some("1"))
}

/// The SELinux type of a file (its security.selinux attribute); None when it has none.
fn file_type(path: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = [0u8; 256];
    // SAFETY: both strings end in NUL; the kernel writes at most buf.len() bytes into buf.
    let n = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            c"security.selinux".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let context = String::from_utf8_lossy(buf.get(..usize::try_from(n).ok()?)?).into_owned();
    context
        .trim_end_matches('\0')
        .split(':')
        .nth(2)
        .map(str::to_string)
}

fn observe(agent: Option<&Path>) -> Seen {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let enforcing = read("/sys/fs/selinux/enforce").map(|s| s.trim() == "1");
    let config = read("/etc/selinux/config").unwrap_or_default();
    let key = |k: &str| {
        config.lines().find_map(|l| {
            let (name, value) = l.trim().split_once('=')?;
            (name.trim() == k).then(|| value.trim().trim_matches('"').to_string())
        })
    };
    let config_type = key("SELINUXTYPE");
    let in_store = config_type.as_deref().and_then(|t| {
        // The store: /var/lib/selinux since policycoreutils 2.4, /etc/selinux before.
        let stores = [
            format!("/var/lib/selinux/{t}/active/modules"),
            format!("/etc/selinux/{t}/active/modules"),
        ];
        let mut any = false;
        for store in stores {
            let Ok(priorities) = std::fs::read_dir(&store) else {
                continue;
            };
            any = true;
            if priorities
                .flatten()
                .any(|p| p.path().join("pam_truid").exists())
            {
                return Some(true);
            }
        }
        any.then_some(false)
    });
    let boolean = read_boolean(BOOLEAN);
    Seen {
        enforcing,
        config_mode: key("SELINUX"),
        config_type,
        in_store,
        boolean,
        agent: agent.map(|sock| {
            let stream = pam_truid::agent::client::connect(sock)?;
            Some(peer_type(&stream).unwrap_or_else(|| "unknown".into()))
        }),
        ..Seen::default()
    }
}

/// The SELinux type of the process at the other end of the socket, from its PID.
fn peer_type(stream: &std::os::unix::net::UnixStream) -> Option<String> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let pid = getsockopt(stream, PeerCredentials).ok()?.pid();
    let context = std::fs::read_to_string(format!("/proc/{pid}/attr/current")).ok()?;
    // user:role:type:level
    context
        .trim_end_matches(['\0', '\n'])
        .split(':')
        .nth(2)
        .map(str::to_string)
}

fn judge(s: &Seen) -> Result<String, String> {
    let config = match (&s.config_mode, &s.config_type) {
        (Some(m), Some(t)) => format!("/etc/selinux/config: SELINUX={m}, SELINUXTYPE={t}"),
        (Some(m), None) => format!("/etc/selinux/config: SELINUX={m}"),
        _ => "no /etc/selinux/config".into(),
    };
    let stored = match s.in_store {
        Some(true) => "the pam_truid policy module is installed",
        Some(false) => "the pam_truid policy module is NOT installed",
        None => "no policy store to look in",
    };
    let Some(enforcing) = s.enforcing else {
        return Ok(format!("not enabled ({config}; {stored})"));
    };
    let mode = if enforcing { "enforcing" } else { "permissive" };
    let Some(boolean) = s.boolean else {
        let what = format!(
            "{mode}, and the pam_truid policy module is not loaded: the login programs may not \
             use the agent's socket, the caches or the config (semodule -X 200 -i {MODULE_FILE})"
        );
        return if enforcing {
            Err(format!("{what}; every login is denied"))
        } else {
            Ok(format!(
                "{what}; denials are only logged now (ausearch -m avc -ts recent)"
            ))
        };
    };
    let boolean_text = format!("{BOOLEAN} {}", if boolean { "on" } else { "off" });
    let route_problem = match &s.agent {
        Some(Some(domain)) if domain == AGENT_DOMAIN => None,
        Some(Some(domain)) => Some(format!(
            "the agent runs as {domain}, not {AGENT_DOMAIN}, so the login programs may not \
             connect to it: start it with systemctl start pam_truid-agent, after \
             restorecon /usr/bin/truid-pam"
        )),
        _ if boolean => None,
        Some(None) => Some(format!(
            "no agent listens and {BOOLEAN} is off, so the login programs may not reach \
             tru.ID: systemctl enable --now pam_truid-agent, or setsebool -P {BOOLEAN} on"
        )),
        None => Some(format!(
            "[api] agent is off and {BOOLEAN} is off, so the login programs may not reach \
             tru.ID: setsebool -P {BOOLEAN} on, or use the agent"
        )),
    };
    let mut problems: Vec<String> = route_problem.into_iter().collect();
    if s.enroll_at_login && s.enroll_boolean != Some(true) {
        problems.push(format!(
            "[login] unenrolled = \"enroll\" and {ENROLL_BOOLEAN} is off, so a first login \
             cannot record its enrolment in the config: setsebool -P {ENROLL_BOOLEAN} on"
        ));
    }
    if let Some((path, t)) = &s.mislabelled {
        problems.push(format!(
            "{} is {t}, not {CONF_TYPE}, so enrolments ({}) cannot rewrite it: restorecon {0}",
            path.display(),
            match (s.self_service, s.enroll_at_login) {
                (true, true) => "[enroll] self, unenrolled = \"enroll\"",
                (true, false) => "[enroll] self",
                _ => "unenrolled = \"enroll\"",
            }
        ));
    }
    let route = match &s.agent {
        Some(Some(_)) => "logins go through the agent",
        _ => "logins go to tru.ID directly",
    };
    let p = problems.join("; ");
    if problems.is_empty() {
        Ok(format!(
            "{mode}, policy module pam_truid loaded, {boolean_text}; {route}"
        ))
    } else if enforcing {
        Err(format!("{mode}, policy module pam_truid loaded: {p}"))
    } else {
        Ok(format!(
            "{mode}, policy module pam_truid loaded, {boolean_text}; once enforcing: {p}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enforcing() -> Seen {
        Seen {
            enforcing: Some(true),
            config_mode: Some("enforcing".into()),
            config_type: Some("targeted".into()),
            in_store: Some(true),
            boolean: Some(false),
            agent: Some(Some(AGENT_DOMAIN.into())),
            ..Seen::default()
        }
    }

    #[test]
    fn not_enabled_is_fine_and_says_what_the_config_says() {
        let s = Seen {
            config_mode: Some("permissive".into()),
            config_type: Some("default".into()),
            in_store: Some(false),
            ..Seen::default()
        };
        let line = judge(&s).unwrap();
        assert!(line.starts_with("not enabled ("), "{line}");
        assert!(
            line.contains("SELINUX=permissive, SELINUXTYPE=default"),
            "{line}"
        );
        assert!(line.contains("NOT installed"), "{line}");
        assert_eq!(
            judge(&Seen::default()).unwrap(),
            "not enabled (no /etc/selinux/config; no policy store to look in)"
        );
    }

    #[test]
    fn enforcing_without_the_module_fails() {
        let s = Seen {
            boolean: None,
            in_store: Some(false),
            ..enforcing()
        };
        let e = judge(&s).unwrap_err();
        assert!(
            e.contains("not loaded") && e.contains("semodule -X 200 -i"),
            "{e}"
        );
        // Permissive: the same words, but not a failure.
        let p = Seen {
            enforcing: Some(false),
            ..s
        };
        assert!(judge(&p).unwrap().contains("ausearch -m avc"));
    }

    #[test]
    fn enforcing_with_the_confined_agent_is_ok() {
        let line = judge(&enforcing()).unwrap();
        assert_eq!(
            line,
            "enforcing, policy module pam_truid loaded, pam_truid_connect_http off; logins go through the agent"
        );
    }

    #[test]
    fn an_agent_in_another_domain_fails_even_with_the_boolean() {
        let s = Seen {
            agent: Some(Some("unconfined_t".into())),
            boolean: Some(true),
            ..enforcing()
        };
        let e = judge(&s).unwrap_err();
        assert!(e.contains("runs as unconfined_t"), "{e}");
    }

    #[test]
    fn enrolments_need_the_boolean_and_the_config_s_type() {
        let at_login = Seen {
            enroll_at_login: true,
            enroll_boolean: Some(false),
            ..enforcing()
        };
        let e = judge(&at_login).unwrap_err();
        assert!(
            e.contains("setsebool -P pam_truid_enroll_at_login on"),
            "{e}"
        );
        let on = Seen {
            enroll_boolean: Some(true),
            ..at_login
        };
        assert!(judge(&on).is_ok());
        // Self-service needs no boolean (the agent's domain may write), but the config's type.
        let relabel = Seen {
            self_service: true,
            mislabelled: Some(("/etc/security/pam_truid.toml".into(), "etc_t".into())),
            ..enforcing()
        };
        let e = judge(&relabel).unwrap_err();
        assert!(
            e.contains("pam_truid.toml is etc_t, not pam_truid_conf_t")
                && e.contains("([enroll] self)")
                && e.contains("restorecon /etc/security/pam_truid.toml"),
            "{e}"
        );
        let permissive = Seen {
            enforcing: Some(false),
            ..relabel
        };
        assert!(judge(&permissive).unwrap().contains("once enforcing"));
    }

    #[test]
    fn no_agent_needs_the_boolean() {
        let s = Seen {
            agent: Some(None),
            ..enforcing()
        };
        let e = judge(&s).unwrap_err();
        assert!(e.contains("setsebool -P pam_truid_connect_http on"), "{e}");
        let on = Seen {
            boolean: Some(true),
            agent: Some(None),
            ..enforcing()
        };
        assert!(judge(&on)
            .unwrap()
            .ends_with("logins go to tru.ID directly"));
        let off_config = Seen {
            agent: None,
            ..enforcing()
        };
        assert!(judge(&off_config)
            .unwrap_err()
            .contains("[api] agent is off"));
        // Permissive: told, not failed.
        let permissive = Seen {
            enforcing: Some(false),
            agent: Some(None),
            ..enforcing()
        };
        assert!(judge(&permissive).unwrap().contains("once enforcing"));
    }
}
