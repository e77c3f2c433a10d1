//! truid-pam: the administrator's command line for pam_truid.
//!
//! Every command works on the same config file the module reads, through the same library
//! code (config, api, flow): what `check` and `test` report is what the module will do.

mod agent;
mod check;
mod enroll;
mod factors;
mod project;
mod recovery;
mod rollout_check;
mod selinux;
mod terminal;
mod test_login;

use clap::{Parser, Subcommand};
use pam_truid::api::{ApiError, Client};
use pam_truid::config::{Config, DEFAULT_PATH};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "truid-pam",
    version,
    about = "Enroll users and manage the tru.ID second factor of pam_truid",
    long_about = "Enroll users and manage the tru.ID second factor of pam_truid.\n\nEvery command reads the module's config file (--config, default /etc/security/pam_truid.toml) with the same checks the module applies."
)]
struct Cli {
    /// The module's config file.
    #[arg(long, global = true, default_value = DEFAULT_PATH, value_name = "PATH")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a factor for USER, show its QR code, activate it with the first code, add USER to [users].
    Enroll(enroll::Args),
    /// Show each user of [users] with the state of their factor at tru.ID.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Deactivate USER's factor at tru.ID and remove USER from [users].
    Deactivate {
        /// The Unix user.
        user: String,
    },
    /// Check everything the module needs: file modes, keys, reachability, token, factors.
    Check {
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Run the module's login flow for USER from this terminal and say what the module would answer.
    Test {
        /// The Unix user to log in as.
        user: String,
        /// The PAM service name to act as (some settings depend on it, e.g. su).
        #[arg(long, default_value = "truid-pam-test")]
        service: String,
    },
    /// Show or set the project's Authenticator settings (needs a [console] table).
    Project {
        #[command(subcommand)]
        action: project::Action,
    },
    /// Make USER's one-time recovery codes and show them once (they replace the old ones), or --revoke them.
    Recovery(recovery::Args),
    /// Run the local agent: keeps tru.ID connections open for the module's logins (run by systemd).
    Agent(agent::Args),
}

/// A failure the CLI reports as one line and a non-zero exit.
#[derive(Debug)]
pub struct Failure(pub String);

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure(e.to_string())
    }
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure(e)
    }
}

impl From<pam_truid::config::ConfigError> for Failure {
    fn from(e: pam_truid::config::ConfigError) -> Self {
        Failure(e.to_string())
    }
}

pub fn load(path: &std::path::Path) -> Result<Config, Failure> {
    Ok(Config::load(path)?)
}

pub fn client(cfg: &Config) -> Result<Client, Failure> {
    Client::new(&cfg.api).map_err(Failure)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Enroll(args) => enroll::run(&cli.config, args),
        Command::List { json } => factors::list(&cli.config, json),
        Command::Deactivate { user } => factors::deactivate(&cli.config, &user),
        Command::Check { json } => check::run(&cli.config, json),
        Command::Test { user, service } => test_login::run(&cli.config, &user, &service),
        Command::Project { action } => project::run(&cli.config, action),
        Command::Recovery(args) => recovery::run(&cli.config, args),
        Command::Agent(args) => agent::run(args, &cli.config),
    };
    match result {
        Ok(code) => code,
        Err(Failure(reason)) => {
            eprintln!("truid-pam: {reason}");
            ExitCode::FAILURE
        }
    }
}
