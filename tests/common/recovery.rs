//! What the recovery-code and one-prompt tests share (tests/rollout.rs, attack_rollout.rs,
//! attack_rollout2.rs): the test's code store, a config naming it, tru.ID made unreachable,
//! what reached the emulator, and a one-prompt stack that records PAM_AUTHTOK.

use super::logins::{conf, free_port, pointed_at_test_module};
use super::*;
use pam_truid::recovery::{self, Store};
use pam_truid::secret::Secret;

/// The test's recovery-code store: `codes/` in the test's folder, root's and 0700, as the
/// store demands of its folder.
pub fn store(w: &World) -> Store {
    let dir = w.path("codes");
    if !dir.exists() {
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    Store::new(&dir.join("recovery.toml"))
}

/// `n` fresh recovery codes for `user` (replacing any they had).
pub fn give_codes(w: &World, user: &str, n: usize) -> Vec<Secret> {
    let codes = recovery::generate(n).unwrap();
    let hashes = codes.iter().map(|c| recovery::hash(c).unwrap()).collect();
    store(w).set(user, Some(hashes)).unwrap();
    codes
}

pub fn left(w: &World, user: &str) -> usize {
    store(w).left(user).unwrap()
}

/// The `[api]` table pointed at a loopback port nothing listens on: tru.ID unreachable.
pub fn down_api(w: &World) -> String {
    let closed = free_port();
    w.api_table().replace(
        &w.emu.info().base_url,
        &format!("https://127.0.0.1:{closed}"),
    )
}

/// The config: `api`, the `[login]` lines, `[recovery]` with the test's store and the
/// `recovery` lines (e.g. `accept = "never"`), and `[users]`.
pub fn config(
    w: &World,
    api: &str,
    login: &str,
    recovery: &str,
    users: &[(&str, &str)],
) -> PathBuf {
    let mut text = format!(
        "{api}\n[login]\n{login}\n\n[recovery]\nfile = \"{}\"\n{recovery}\n\n[users]\n",
        store(w).path().display()
    );
    for (u, f) in users {
        text.push_str(&format!("{u} = \"{f}\"\n"));
    }
    w.write_config(&text)
}

/// Codes sent to tru.ID so far: every verify request that reached the emulator.
pub fn verifies(w: &World) -> u64 {
    w.emu
        .stats()
        .requests
        .get("challenge_verify")
        .copied()
        .unwrap_or(0)
}

/// The `outcome=` words logged since the last look.
pub fn outcome_names(w: &World) -> Vec<String> {
    w.outcomes()
        .iter()
        .map(|l| {
            l.split("outcome=")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

/// conf/pam.d/sshd-combined's auth lines (pointed at the test module) as service `svc`, with a
/// pam_exec line right after the module's that writes PAM_AUTHTOK as the next module sees it
/// to `authtok` in the test's folder (`expose_authtok`: on its stdin; had the module set none,
/// pam_exec would prompt, which a one-prompt script shows).
pub fn combined_stack_recording_authtok(w: &World) -> (PathBuf, PathBuf) {
    let auth: String = conf("pam.d/sshd-combined")
        .lines()
        .filter(|l| l.starts_with("auth"))
        .map(|l| format!("{l}\n"))
        .collect();
    let auth = pointed_at_test_module(w, &auth, "conf/pam.d/sshd-combined");
    let record = w.path("authtok");
    let script = w.path("record-authtok");
    std::fs::write(&script, format!("#!/bin/sh\ncat > {}\n", record.display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut text = String::new();
    for l in auth.lines() {
        text.push_str(l);
        text.push('\n');
        if l.contains("libpam_truid.so") {
            text.push_str(&format!(
                "auth optional pam_exec.so quiet expose_authtok {}\n",
                script.display()
            ));
        }
    }
    let dir = w.path("pam.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("svc"), text).unwrap();
    (dir, record)
}

/// PAM_AUTHTOK as pam_exec recorded it, byte for byte (`None`: pam_exec did not run), then
/// forgotten.
pub fn take_authtok(record: &Path) -> Option<Vec<u8>> {
    let raw = std::fs::read(record).ok()?;
    std::fs::remove_file(record).unwrap();
    let end = raw.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    Some(raw[..end].to_vec())
}
