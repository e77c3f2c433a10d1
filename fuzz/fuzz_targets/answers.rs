//! tru.ID's answers: whatever bytes come back, decoding gives a value or an error, never a
//! panic, and the text the module would show or log from them is escaped.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pam_truid::api::{Challenge, ChallengeStatus, Factor, FactorList, Problem};

fn clean(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = serde_json::from_slice::<Problem>(data) {
        let s = p.summary();
        assert!(clean(&s), "{s:?}");
        // title and detail, each cut at 200 characters plus escapes.
        assert!(s.chars().count() <= 2 * (200 * 10 + 3) + 2);
    }
    if let Ok(c) = serde_json::from_slice::<Challenge>(data) {
        if let ChallengeStatus::Other(s) = &c.status {
            assert!(clean(s), "{s:?}");
            assert!(s != "VERIFIED");
        }
        let _ = format!("{c:?}");
    }
    if let Ok(f) = serde_json::from_slice::<Factor>(data) {
        let _ = f.kind();
        let shown = format!("{f:?}");
        if let Some(url) = &f.url {
            if url.expose().len() >= 12 {
                assert!(!shown.contains(url.expose()), "the TOTP URL is in Debug");
            }
        }
    }
    if let Ok(l) = serde_json::from_slice::<FactorList>(data) {
        let _ = l.factors().len();
    }
});
