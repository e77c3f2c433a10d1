//! The binary: one JSON line on stdout when ready, exit 0 on SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use truid_emulator::ReadyInfo;

/// Kills the child when the test ends, passed or failed.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn prints_one_json_line_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_truid-emulator"))
        .args(["--listen", "127.0.0.1:0", "--cert-dir"])
        .arg(dir.path())
        .args([
            "--client-id",
            "cid",
            "--client-secret",
            "csecret",
            "--latency-ms",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut g = Guard(child);
    let mut out = BufReader::new(g.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    for k in [
        "base_url",
        "ca_file",
        "client_id",
        "client_secret",
        "workspace_id",
        "project_id",
        "workspace_client_id",
        "workspace_client_secret",
    ] {
        assert!(keys.contains(&k), "{k} in {line}");
    }
    assert_eq!(keys.len(), 8);
    let info: ReadyInfo = serde_json::from_value(v).unwrap();
    assert_eq!(info.client_id, "cid");
    assert!(info.base_url.starts_with("https://127.0.0.1:"));
    let ca = dir.path().join("ca.pem");
    assert_eq!(info.ca_file.as_deref(), Some(ca.to_str().unwrap()));
    for f in ["ca.pem", "server.pem", "server.key"] {
        assert!(dir.path().join(f).exists(), "{f}");
    }

    let pid = g.0.id() as libc::pid_t;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = wait_exit(&mut g.0, Duration::from_secs(10)).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "nothing else on stdout");
}

#[test]
fn no_tls_and_help() {
    let out = Command::new(env!("CARGO_BIN_EXE_truid-emulator"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--no-tls",
        "--cert-dir",
        "--state-file",
        "--client-id",
        "--client-secret",
        "--workspace-id",
        "--project-id",
        "--workspace-client-id",
        "--workspace-client-secret",
        "--token-ttl",
        "--challenge-ttl",
        "--latency-ms",
        "--push-auto",
        "--push-delay-ms",
        "--rate-limit",
        "--fault",
    ] {
        assert!(help.contains(flag), "{flag}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_truid-emulator"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let child = Command::new(env!("CARGO_BIN_EXE_truid-emulator"))
        .args([
            "--no-tls",
            "--push-auto",
            "approve",
            "--push-delay-ms",
            "10",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut g = Guard(child);
    let mut out = BufReader::new(g.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let info: ReadyInfo = serde_json::from_str(&line).unwrap();
    assert!(info.base_url.starts_with("http://127.0.0.1:"));
    assert_eq!(info.ca_file, None);
    // reqwest is built without a default crypto provider: hand it a rustls config.
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let c = reqwest::blocking::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = c
        .post(format!("{}/oauth2/v1/token", info.base_url))
        .basic_auth(&info.client_id, Some(&info.client_secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        unsafe { libc::kill(g.0.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let status = wait_exit(&mut g.0, Duration::from_secs(10)).expect("exits after SIGINT");
    assert!(status.success());
}
