//! `truid-pam project show|set`: the project's Authenticator settings, through the console API.

use crate::{load, Failure};
use pam_truid::api::{Client, Scope};
use reqwest::Method;
use serde_json::Value;
use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Action {
    /// Print the project's Authenticator settings.
    Show {
        /// Print the whole project as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change some of the settings; the others, and the project's other configuration, are kept.
    Set {
        /// The name the authenticator app shows.
        #[arg(long, value_name = "N")]
        issuer_name: Option<String>,
        /// Where tru.ID posts challenge results.
        #[arg(long, value_name = "U")]
        callback_url: Option<String>,
        /// The default push message.
        #[arg(long, value_name = "M")]
        message: Option<String>,
    },
}

pub fn run(path: &Path, action: Action) -> Result<ExitCode, Failure> {
    let cfg = load(path)?;
    let console = cfg.console.as_ref().ok_or_else(|| {
        Failure(format!(
            "{} has no [console] table; add workspace_id, project_id, client_id and client_secret of the workspace",
            path.display()
        ))
    })?;
    let mut api = Client::with_credentials(
        &cfg.api,
        Scope::Console,
        &console.client_id,
        &console.client_secret,
    )
    .map_err(Failure)?;
    let project_path = format!(
        "/console/v0.2/workspaces/{}/projects/{}",
        console.workspace_id, console.project_id
    );
    let project = api.json(Method::GET, &project_path, None)?;
    match action {
        Action::Show { json } => {
            if json {
                println!("{}", pretty(&project)?);
            } else {
                print_settings(&project);
            }
        }
        Action::Set {
            issuer_name,
            callback_url,
            message,
        } => {
            if let Some(u) = &callback_url {
                let parsed = reqwest::Url::parse(u)
                    .map_err(|e| Failure(format!("--callback-url: not a URL ({e})")))?;
                if parsed.scheme() != "https" {
                    return Err(Failure(
                        "--callback-url: tru.ID calls https:// URLs only".into(),
                    ));
                }
            }
            let changes = [
                ("issuer_name", issuer_name),
                ("challenge_callback_url", callback_url),
                ("challenge_default_message", message),
            ];
            if changes.iter().all(|(_, v)| v.is_none()) {
                return Err(Failure(
                    "nothing to set; give --issuer-name, --callback-url or --message".into(),
                ));
            }
            let merged = merge(&project, &changes);
            let patch =
                serde_json::json!([{ "op": "replace", "path": "/configuration", "value": merged }]);
            let updated = api.json(Method::PATCH, &project_path, Some(patch))?;
            print_settings(&updated);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The project's configuration with the given Authenticator fields changed and everything
/// else as it was: `add` on /configuration replaces the object whole.
fn merge(project: &Value, changes: &[(&str, Option<String>)]) -> Value {
    let mut configuration = project
        .get("configuration")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}));
    if !configuration
        .get("authenticator")
        .is_some_and(Value::is_object)
    {
        configuration["authenticator"] = serde_json::json!({});
    }
    for (key, value) in changes {
        if let Some(v) = value {
            configuration["authenticator"][*key] = Value::String(v.clone());
        }
    }
    configuration
}

fn print_settings(project: &Value) {
    let a = &project["configuration"]["authenticator"];
    for key in [
        "issuer_name",
        "challenge_callback_url",
        "challenge_default_message",
    ] {
        let v = a.get(key).and_then(Value::as_str).unwrap_or("(not set)");
        println!("{key}: {}", pam_truid::text::sanitize(v, 300));
    }
}

fn pretty(v: &Value) -> Result<String, Failure> {
    serde_json::to_string_pretty(v).map_err(|e| Failure(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_the_rest() {
        let project = serde_json::json!({"configuration": {"phone_check": {"x": 1}, "authenticator": {"issuer_name": "Old", "challenge_default_message": "m"}}});
        let m = merge(
            &project,
            &[
                ("issuer_name", Some("New".into())),
                ("challenge_callback_url", None),
            ],
        );
        assert_eq!(
            m,
            serde_json::json!({"phone_check": {"x": 1}, "authenticator": {"issuer_name": "New", "challenge_default_message": "m"}})
        );
        let m = merge(&serde_json::json!({}), &[("issuer_name", Some("N".into()))]);
        assert_eq!(
            m,
            serde_json::json!({"authenticator": {"issuer_name": "N"}})
        );
    }
}
