//! What one recovery-code check costs (issue 16: it must not cost seconds per try), in release
//! mode on this machine: one argon2id verify at the stored parameters; a wrong code, which
//! costs MAX_COUNT (20) hashes whoever the user is (their codes, then stand-ins); a right code
//! found and struck off (`use_code`, the locked rewrite included), first and last of 10.
//!
//!   sudo cargo run --release --example recovery_cost [-- RUNS]   (as root: the store wants a root-owned folder)
//!
//! Run through `tests/bench.sh --recovery`. Prints median and max over RUNS (default 25) runs.

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use pam_truid::recovery::{self, Store, Used};
use pam_truid::secret::Secret;
use std::time::{Duration, Instant};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and max of `runs` timings of `f`; `setup` (untimed) runs before each.
fn measure(runs: usize, mut setup: impl FnMut(), mut f: impl FnMut()) -> (f64, f64) {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            setup();
            let start = Instant::now();
            f();
            ms(start.elapsed())
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[t.len() / 2], t[t.len() - 1])
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("RUNS is a number"))
        .unwrap_or(25)
        .max(20);
    assert!(
        nix::unistd::geteuid().is_root(),
        "run as root: the recovery file must be in a root-owned folder"
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(&dir.path().join("rc/recovery.toml"));
    let codes = recovery::generate(10).unwrap();
    let hashes: Vec<String> = codes.iter().map(|c| recovery::hash(c).unwrap()).collect();
    let params = hashes[0].split('$').nth(3).unwrap_or("?").to_string();
    let wrong = loop {
        let c = recovery::generate(1).unwrap().remove(0);
        if !codes.iter().any(|k| k.expose() == c.expose()) {
            break c;
        }
    };
    store.set("one", Some(vec![hashes[0].clone()])).unwrap();
    store.set("ten", Some(hashes.clone())).unwrap();

    println!("recovery-code check, argon2id {params}, {runs} runs each, release build");
    println!(
        "{} CPUs; {}",
        std::thread::available_parallelism().map_or(1, usize::from),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_string())
            )
            .unwrap_or_default()
    );
    println!();
    println!("| what | median ms | max ms |");
    println!("|---|---:|---:|");
    let row = |what: &str, (median, max): (f64, f64)| {
        println!("| {what} | {median:.1} | {max:.1} |");
    };

    // The KDF alone: the hash string's own parameters and salt, the code's canonical form.
    let phc = PasswordHash::new(&hashes[0]).unwrap();
    let canonical = recovery::parse_code(codes[0].expose()).unwrap();
    let argon = argon2::Argon2::default();
    row(
        "one argon2id verify (the KDF alone)",
        measure(
            runs,
            || {},
            || {
                argon
                    .verify_password(canonical.expose().as_bytes(), &phc)
                    .unwrap()
            },
        ),
    );
    row(
        "wrong code, user with 1 code (read, then 20 hashes: its 1 and 19 stand-ins)",
        measure(
            runs,
            || {},
            || assert_eq!(store.use_code("one", &wrong).unwrap(), Used::Rejected),
        ),
    );
    row(
        "wrong code, user with 10 codes (its 10, then 10 stand-ins)",
        measure(
            runs,
            || {},
            || assert_eq!(store.use_code("ten", &wrong).unwrap(), Used::Rejected),
        ),
    );
    // The set is put back (untimed) before each run: the same 10 hashes, no hashing.
    let reset = || store.set("ten", Some(hashes.clone())).unwrap();
    for (what, code) in [
        (
            "right code, first of 10 (1 verify + locked rewrite)",
            &codes[0],
        ),
        (
            "right code, last of 10 (10 verifies + locked rewrite)",
            &codes[9],
        ),
    ] {
        row(
            what,
            measure(runs, reset, || {
                assert_eq!(
                    store.use_code("ten", code).unwrap(),
                    Used::Accepted { left: 9 }
                )
            }),
        );
    }
    // A code typed by a person: dashes, capitals and look-alikes are the same code.
    let typed = Secret::new(codes[3].expose().to_uppercase());
    reset();
    assert!(matches!(
        store.use_code("ten", &typed).unwrap(),
        Used::Accepted { .. }
    ));
}
