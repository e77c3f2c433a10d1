//! The config parser: any text either parses or gives an error, never a panic; an error's log
//! line carries no raw control character.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pam_truid::config::Config;
use pam_truid::flow::{LoginContext, Outcome};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A path that does not exist: the permission checks of a file parsed from disk are skipped.
    match Config::parse(Path::new("/nonexistent/pam_truid.toml"), text) {
        Ok(cfg) => {
            // Whatever was parsed holds the documented ranges.
            assert!((1..=10).contains(&cfg.login.tries));
            assert!((1..=120).contains(&cfg.api.timeout.as_secs()));
            assert!(!cfg.login.prompt.chars().any(char::is_control));
            for user in cfg.users.keys() {
                assert!(pam_truid::config::is_valid_name(user), "{user:?}");
            }
            let _ = format!("{cfg:?}");
        }
        Err(e) => {
            let outcome = Outcome::ConfigError {
                reason: e.to_string(),
            };
            let line = pam_truid::log::outcome_line(&LoginContext::default(), &outcome);
            assert!(!line.chars().any(char::is_control), "{line:?}");
        }
    }
});
