//! `truid-pam list` and `truid-pam deactivate`.

use crate::{client, load, Failure};
use pam_truid::text::sanitize;
use serde::Serialize;
use std::path::Path;
use std::process::ExitCode;

#[derive(Serialize)]
struct Row {
    user: String,
    factor_id: String,
    /// In [users] of the config (false: held by tru.ID for this user, missing from the config).
    in_config: bool,
    status: String,
    #[serde(rename = "type")]
    kind: String,
    external_user_id: String,
    error: Option<String>,
    /// Unused recovery codes of the user (`None`: the recovery file cannot be read).
    recovery_codes: Option<usize>,
}

pub fn list(path: &Path, json: bool) -> Result<ExitCode, Failure> {
    let cfg = load(path)?;
    let mut api = client(&cfg)?;
    // A broken recovery file is said in words; the factors are still listed.
    let codes = pam_truid::recovery::Store::new(&cfg.recovery.file).counts();
    let left = |user: &str| {
        codes
            .as_ref()
            .ok()
            .map(|c| c.get(user).copied().unwrap_or(0))
    };
    let mut rows = Vec::new();
    for (user, factor) in &cfg.users {
        let mut row = Row {
            user: sanitize(user, 128),
            factor_id: factor.to_string(),
            in_config: true,
            status: String::new(),
            kind: String::new(),
            external_user_id: String::new(),
            error: None,
            recovery_codes: left(user),
        };
        match api.get_factor(factor.as_str()) {
            Ok(f) => {
                row.status = sanitize(&f.status, 16);
                row.kind = sanitize(&f.kind, 16);
                row.external_user_id = sanitize(&f.external_user_id, 64);
            }
            Err(e) => row.error = Some(e.to_string()),
        }
        rows.push(row);
        // Factors tru.ID holds for this user (under the external user ID lookup would search
        // for) that the config does not name.
        let external = format!("{}{user}", cfg.login.lookup_prefix);
        if let Ok(found) = api.search_factors(&external) {
            for f in found
                .into_iter()
                .filter(|f| f.factor_id != factor.as_str() && f.external_user_id == external)
            {
                rows.push(Row {
                    user: sanitize(user, 128),
                    factor_id: sanitize(&f.factor_id, 64),
                    in_config: false,
                    status: sanitize(&f.status, 16),
                    kind: sanitize(&f.kind, 16),
                    external_user_id: sanitize(&f.external_user_id, 64),
                    error: None,
                    recovery_codes: left(user),
                });
            }
        }
    }
    // Users with codes but no factor in [users].
    if let Ok(counts) = &codes {
        for (user, n) in counts.iter().filter(|(u, _)| !cfg.users.contains_key(*u)) {
            rows.push(Row {
                user: sanitize(user, 128),
                factor_id: String::new(),
                in_config: false,
                status: String::new(),
                kind: String::new(),
                external_user_id: String::new(),
                error: None,
                recovery_codes: Some(*n),
            });
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(|e| Failure(e.to_string()))?
        );
    } else {
        println!(
            "{:<16} {:<36} {:<9} {:<5} {:<16} {:<8} NOTE",
            "USER", "FACTOR", "STATUS", "TYPE", "EXTERNAL ID", "RECOVERY"
        );
        for r in &rows {
            let note = match (&r.error, r.in_config) {
                (Some(e), _) => e.clone(),
                (None, false) if r.factor_id.is_empty() => {
                    "recovery codes only: no factor in [users]".into()
                }
                (None, false) => "not in the config".into(),
                (None, true) => String::new(),
            };
            let codes = r.recovery_codes.map_or("?".into(), |n| n.to_string());
            println!(
                "{:<16} {:<36} {:<9} {:<5} {:<16} {codes:<8} {note}",
                r.user, r.factor_id, r.status, r.kind, r.external_user_id
            );
        }
    }
    if let Err(e) = &codes {
        eprintln!("truid-pam: recovery codes cannot be counted: {e}");
    }
    Ok(
        if rows.iter().any(|r| r.error.is_some()) || codes.is_err() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        },
    )
}

pub fn deactivate(path: &Path, typed: &str) -> Result<ExitCode, Failure> {
    let cfg = load(path)?;
    // The key as given, or the name NSS gives for it (`Alice` for the enrolled `alice`); a
    // deleted account keeps its exact key.
    let canonical = pam_truid::host::passwd(typed)
        .ok()
        .flatten()
        .map(|p| p.name);
    let user = match canonical {
        Some(c) if !cfg.users.contains_key(typed) => c,
        _ => typed.to_string(),
    };
    let user = user.as_str();
    let factor = cfg.users.get(user).ok_or_else(|| {
        Failure(format!(
            "{} is not in [users] of {}; `truid-pam list` shows who is",
            sanitize(user, 64),
            path.display()
        ))
    })?;
    let mut api = client(&cfg)?;
    // Renaming the external user ID frees it, so the user can be enrolled again.
    let f = api.retire_factor(factor.as_str())?;
    if f.status != "INACTIVE" {
        return Err(Failure(format!(
            "tru.ID left factor {factor} {}; {} stays in the config",
            sanitize(&f.status, 16),
            sanitize(user, 128)
        )));
    }
    pam_truid::config_edit::update(path, |doc| {
        pam_truid::config_edit::remove_user(doc, user);
        Ok(())
    })?;
    println!(
        "Factor {factor} deactivated; \"{}\" removed from [users].",
        sanitize(user, 128)
    );
    Ok(ExitCode::SUCCESS)
}
