//! The emulator driven as a client would drive tru.ID: over TLS, trusting the generated CA.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::{json, Value};
use sha2::Digest;
use truid_emulator::{totp, FactorType, Options};

#[test]
fn token_good_bad_credentials_and_bad_header() {
    let (emu, c) = start_default();
    let i = emu.info().clone();

    let r = token_resp(&c, &emu, &i.client_id, &i.client_secret, "authenticator");
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let v: Value = r.json().unwrap();
    assert_eq!(v["token_type"], "bearer");
    assert_eq!(v["expires_in"], 3600);
    assert_eq!(v["scope"], "authenticator");
    assert!(v["access_token"].as_str().unwrap().len() > 20);

    // No scope asked: every scope of the project.
    let r = c
        .post(url(&emu, "/oauth2/v1/token"))
        .basic_auth(&i.client_id, Some(&i.client_secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .unwrap();
    let v: Value = r.json().unwrap();
    assert_eq!(v["scope"], "authenticator phone_check");

    // Workspace credentials get console only.
    let r = token_resp(
        &c,
        &emu,
        &i.workspace_client_id,
        &i.workspace_client_secret,
        "console",
    );
    assert_eq!(r.status(), 200);
    let r = token_resp(
        &c,
        &emu,
        &i.workspace_client_id,
        &i.workspace_client_secret,
        "authenticator",
    );
    assert_problem(r, 400);

    // Wrong secret, unknown client.
    assert_problem(
        token_resp(&c, &emu, &i.client_id, "nope", "authenticator"),
        401,
    );
    assert_problem(
        token_resp(&c, &emu, "nobody", &i.client_secret, "authenticator"),
        401,
    );

    // Bad Basic headers.
    for h in [
        "Basic !!!notbase64",
        "Bearer abc",
        "Basic",
        "Basic bm9jb2xvbg==",
    ] {
        let r = c
            .post(url(&emu, "/oauth2/v1/token"))
            .header("authorization", h)
            .form(&[("grant_type", "client_credentials")])
            .send()
            .unwrap();
        assert_problem(r, 401);
    }
    let r = c
        .post(url(&emu, "/oauth2/v1/token"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .unwrap();
    assert_problem(r, 401);

    // Unknown or missing grant.
    let r = c
        .post(url(&emu, "/oauth2/v1/token"))
        .basic_auth(&i.client_id, Some(&i.client_secret))
        .form(&[("grant_type", "password")])
        .send()
        .unwrap();
    assert_problem(r, 400);
    let r = c
        .post(url(&emu, "/oauth2/v1/token"))
        .basic_auth(&i.client_id, Some(&i.client_secret))
        .form(&[("scope", "authenticator")])
        .send()
        .unwrap();
    assert_problem(r, 400);
    assert_eq!(emu.stats().tokens_issued, 3);
}

#[test]
fn factor_qr_activation_challenge_verify_replay_and_wrong_code() {
    let (emu, c) = start_default();
    let tok = token(&c, &emu);
    let f = create_factor(&c, &emu, &tok, "alice@example.com");
    assert_eq!(f["status"], "PENDING");
    assert_eq!(f["type"], "TOTP");
    assert_eq!(f["external_user_id"], "alice@example.com");
    let fid = f["factor_id"].as_str().unwrap().to_string();
    assert_eq!(uuid::Uuid::parse_str(&fid).unwrap().get_version_num(), 4);
    assert!(f["created_at"].as_str().unwrap().ends_with("+00:00"));
    assert!(f["_links"]["self"]["href"]
        .as_str()
        .unwrap()
        .ends_with(&fid));
    let u = f["url"].as_str().unwrap();
    assert!(u.starts_with("otpauth://totp/pam_truid%20emulator:alice%40example.com?secret="));
    assert!(u.contains("&issuer=pam_truid%20emulator&algorithm=SHA1&digits=6&period=30"));

    // The QR code carries the URI.
    let data = f["data_url"].as_str().unwrap();
    let b64 = data.strip_prefix("data:image/png;base64,").unwrap();
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let img = image::load_from_memory_with_format(&png, image::ImageFormat::Png)
        .unwrap()
        .to_luma8();
    let mut prepared = rqrr::PreparedImage::prepare(img);
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1);
    let (_, content) = grids[0].decode().unwrap();
    assert_eq!(content, u);

    // The code computed from the URI's secret matches the emulator's.
    let secret = secret_of(u);
    assert_eq!(emu.code(&fid, 0).unwrap(), code_for(&secret, 0));
    let factor_url = authn(&emu, &format!("/factors/{fid}"));

    // A challenge on a PENDING factor is refused.
    assert_problem(new_challenge(&c, &emu, &tok, &fid, json!({})), 400);

    // Wrong activation code: 400, still PENDING.
    let wrong = wrong_code(&secret);
    let r = patch(
        &c,
        &factor_url,
        &tok,
        json!([{"op": "add", "path": "/code", "value": wrong}]),
    );
    assert_problem(r, 400);
    let v: Value = c
        .get(&factor_url)
        .bearer_auth(&tok)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["status"], "PENDING");

    // Activation.
    let r = patch(
        &c,
        &factor_url,
        &tok,
        json!([{"op": "add", "path": "/code", "value": code_for(&secret, 0)}]),
    );
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/hal+json");
    let v: Value = r.json().unwrap();
    assert_eq!(v["status"], "ACTIVE");

    // Challenge + verify with the next step's code.
    let r = new_challenge(&c, &emu, &tok, &fid, json!({"reference_id": "login-1"}));
    assert_eq!(r.status(), 201);
    let ch: Value = r.json().unwrap();
    assert_eq!(ch["status"], "PENDING");
    assert_eq!(ch["reference_id"], "login-1");
    let cid = ch["challenge_id"].as_str().unwrap().to_string();
    let ch_url = authn(&emu, &format!("/factors/{fid}/challenges/{cid}"));
    assert!(ch["_links"]["self"]["href"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/challenges/{cid}")));
    let v: Value = c
        .get(&ch_url)
        .bearer_auth(&tok)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["status"], "PENDING");
    let good = code_for(&secret, 1);
    let r = patch(
        &c,
        &ch_url,
        &tok,
        json!([{"op": "add", "path": "/code", "value": good}]),
    );
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(v["status"], "VERIFIED");
    assert_eq!(emu.challenge(&fid, &cid).unwrap().status, "VERIFIED");
    assert_eq!(
        emu.challenge(&fid, &cid).unwrap().reference_id.as_deref(),
        Some("login-1")
    );

    // A spent challenge takes no more codes.
    let r = patch(
        &c,
        &ch_url,
        &tok,
        json!([{"op": "add", "path": "/code", "value": good}]),
    );
    assert_problem(r, 400);

    // Replay of the same code on a fresh challenge: refused (FAILED).
    let ch2: Value = new_challenge(&c, &emu, &tok, &fid, json!({}))
        .json()
        .unwrap();
    let cid2 = ch2["challenge_id"].as_str().unwrap();
    let r = patch(
        &c,
        &authn(&emu, &format!("/factors/{fid}/challenges/{cid2}")),
        &tok,
        json!([{"op": "add", "path": "/code", "value": good}]),
    );
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap()["status"], "FAILED");

    // Wrong code on the singular /challenge path: FAILED.
    let r = c
        .post(authn(&emu, &format!("/factors/{fid}/challenge")))
        .bearer_auth(&tok)
        .json(&json!({"reference_id": "r3"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let cid3 = r.json::<Value>().unwrap()["challenge_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = patch(
        &c,
        &authn(&emu, &format!("/factors/{fid}/challenge/{cid3}")),
        &tok,
        json!([{"op": "add", "path": "/code", "value": "12345"}]),
    );
    assert_eq!(r.json::<Value>().unwrap()["status"], "FAILED");
    let views = emu.last_challenges();
    assert_eq!(views.len(), 3);
    assert_eq!(views[2].reference_id.as_deref(), Some("r3"));
    let s = emu.stats();
    assert_eq!(s.challenges_created, 3);
    assert_eq!(s.verifications, 1);
    assert_eq!(s.verification_attempts, 3);
}

#[test]
fn challenge_expiry() {
    let (emu, c) = start(Options {
        challenge_ttl: Duration::from_millis(300),
        ..Options::default()
    });
    let tok = token(&c, &emu);
    let (f, secret) = active_factor(&c, &emu, &tok, "bob");
    let fid = f["factor_id"].as_str().unwrap();
    let ch: Value = new_challenge(&c, &emu, &tok, fid, json!({}))
        .json()
        .unwrap();
    let ch_url = authn(
        &emu,
        &format!(
            "/factors/{fid}/challenges/{}",
            ch["challenge_id"].as_str().unwrap()
        ),
    );
    let v = poll(Duration::from_secs(5), || {
        let v: Value = c
            .get(&ch_url)
            .bearer_auth(&tok)
            .send()
            .unwrap()
            .json()
            .unwrap();
        (v["status"] == "EXPIRED").then_some(v)
    })
    .expect("challenge expires");
    assert!(v["expired_at"].as_str().unwrap().ends_with("+00:00"));
    let r = patch(
        &c,
        &ch_url,
        &tok,
        json!([{"op": "add", "path": "/code", "value": code_for(&secret, 1)}]),
    );
    assert_problem(r, 400);
}

#[test]
fn deactivate_search_and_reuse_external_id() {
    let (emu, c) = start_default();
    let tok = token(&c, &emu);
    let (f, _) = active_factor(&c, &emu, &tok, "carol");
    let fid = f["factor_id"].as_str().unwrap();
    let search = |ext: &str| -> Value {
        c.get(authn(&emu, "/factors"))
            .bearer_auth(&tok)
            .query(&[
                ("search", format!("external_user_id=={ext}").as_str()),
                ("page", "1"),
                ("size", "10"),
            ])
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    let v = search("carol");
    assert_eq!(v["_embedded"]["factors"].as_array().unwrap().len(), 1);
    assert_eq!(v["page"]["total_elements"], 1);

    // Duplicate external_user_id refused.
    let r = c
        .post(authn(&emu, "/factors"))
        .bearer_auth(&tok)
        .json(&json!({"phone_number": "447700900001", "external_user_id": "carol"}))
        .send()
        .unwrap();
    assert_problem(r, 400);

    let r = patch(
        &c,
        &authn(&emu, &format!("/factors/{fid}")),
        &tok,
        json!([
            {"op": "replace", "path": "/status", "value": "INACTIVE"},
            {"op": "replace", "path": "/external_user_id", "value": "disabled-1234"}
        ]),
    );
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(v["status"], "INACTIVE");
    assert_eq!(v["external_user_id"], "disabled-1234");
    assert_eq!(
        search("carol")["_embedded"]["factors"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(search("carol")["page"]["total_elements"], 0);

    // No challenge on an INACTIVE factor.
    assert_problem(new_challenge(&c, &emu, &tok, fid, json!({})), 400);
    // The id is free again.
    let f2 = create_factor(&c, &emu, &tok, "carol");
    assert_ne!(f2["factor_id"], f["factor_id"]);
    assert_eq!(
        search("carol")["_embedded"]["factors"][0]["factor_id"],
        f2["factor_id"]
    );
}

#[test]
fn list_paging_hal_shape() {
    let (emu, c) = start_default();
    let tok = token(&c, &emu);
    for i in 0..5 {
        emu.seed_factor(&format!("user{i}"), FactorType::Totp);
    }
    let get = |q: &[(&str, &str)]| -> Value {
        let r = c
            .get(authn(&emu, "/factors"))
            .bearer_auth(&tok)
            .query(q)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/hal+json");
        r.json().unwrap()
    };
    let v = get(&[("page", "2"), ("size", "2")]);
    assert_eq!(
        v["page"],
        json!({"size": 2, "number": 2, "total_pages": 3, "total_elements": 5})
    );
    assert_eq!(v["_embedded"]["factors"].as_array().unwrap().len(), 2);
    for l in ["self", "first", "last", "prev", "next"] {
        assert!(
            v["_links"][l]["href"]
                .as_str()
                .unwrap()
                .contains("/authenticator/v0.1/factors?"),
            "{l}"
        );
    }
    let v = get(&[("page", "3"), ("size", "2")]);
    assert_eq!(v["_embedded"]["factors"].as_array().unwrap().len(), 1);
    assert!(v["_links"].get("next").is_none());
    let v = get(&[]);
    assert_eq!(v["page"]["size"], 10);
    assert_eq!(v["_embedded"]["factors"].as_array().unwrap().len(), 5);
    let v = get(&[("search", "external_user_id==user3")]);
    assert_eq!(v["_embedded"]["factors"][0]["external_user_id"], "user3");
    assert_eq!(v["_embedded"]["factors"][0]["status"], "ACTIVE");
    let v = get(&[("search", "status==ACTIVE;type==TOTP")]);
    assert_eq!(v["page"]["total_elements"], 5);
    for bad in [
        &[("page", "0")][..],
        &[("size", "101")][..],
        &[("size", "x")][..],
        &[("search", "bogus")][..],
    ] {
        let r = c
            .get(authn(&emu, "/factors"))
            .bearer_auth(&tok)
            .query(bad)
            .send()
            .unwrap();
        assert_problem(r, 400);
    }
}

#[test]
fn console_get_patch_merge_and_issuer_name() {
    let (emu, c) = start_default();
    let i = emu.info().clone();
    let ctok = console_token(&c, &emu);
    let purl = url(
        &emu,
        &format!(
            "/console/v0.2/workspaces/{}/projects/{}",
            i.workspace_id, i.project_id
        ),
    );
    let v: Value = c
        .get(&purl)
        .bearer_auth(&ctok)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["project_id"], i.project_id.as_str());
    assert!(v["name"].is_string());
    assert!(v["created_at"].is_string());
    assert_eq!(
        v["configuration"]["authenticator"]["issuer_name"],
        "pam_truid emulator"
    );
    let phone_check = v["configuration"]["phone_check"].clone();
    assert!(phone_check.is_object());

    // A deep path keeps the rest.
    let r = patch(
        &c,
        &purl,
        &ctok,
        json!([{"op": "replace", "path": "/configuration/authenticator/issuer_name", "value": "ACME SSH"}]),
    );
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(
        v["configuration"]["authenticator"]["issuer_name"],
        "ACME SSH"
    );
    assert_eq!(v["configuration"]["phone_check"], phone_check);
    assert_eq!(
        v["configuration"]["authenticator"]["challenge_default_message"],
        "Please confirm your login"
    );

    // A read-merge-replace of /configuration, as a client must do, keeps phone_check.
    let mut cfg = v["configuration"].clone();
    cfg["authenticator"]["challenge_callback_url"] = json!("https://example.com/cb");
    let r = patch(
        &c,
        &purl,
        &ctok,
        json!([{"op": "replace", "path": "/configuration", "value": cfg}]),
    );
    let v: Value = r.json().unwrap();
    assert_eq!(v["configuration"]["phone_check"], phone_check);
    assert_eq!(
        v["configuration"]["authenticator"]["challenge_callback_url"],
        "https://example.com/cb"
    );

    // `add` on /configuration replaces the whole object.
    let r = patch(
        &c,
        &purl,
        &ctok,
        json!([{"op": "add", "path": "/configuration", "value": {"authenticator": {"issuer_name": "Only"}}}]),
    );
    let v: Value = r.json().unwrap();
    assert!(v["configuration"].get("phone_check").is_none());

    // issuer_name is used in new factors.
    let tok = token(&c, &emu);
    let f = create_factor(&c, &emu, &tok, "dave");
    assert!(f["url"]
        .as_str()
        .unwrap()
        .starts_with("otpauth://totp/Only:dave?"));
    assert!(f["url"].as_str().unwrap().contains("issuer=Only&"));

    // A project token has no console scope; unknown ids are 404; wrong types 400.
    assert_problem(c.get(&purl).bearer_auth(&tok).send().unwrap(), 403);
    let other = url(
        &emu,
        &format!("/console/v0.2/workspaces/{}/projects/nope", i.workspace_id),
    );
    assert_problem(c.get(&other).bearer_auth(&ctok).send().unwrap(), 404);
    let r = patch(
        &c,
        &purl,
        &ctok,
        json!([{"op": "replace", "path": "/configuration", "value": 5}]),
    );
    assert_problem(r, 400);
    let r = patch(
        &c,
        &purl,
        &ctok,
        json!([{"op": "replace", "path": "/project_id", "value": "x"}]),
    );
    assert_problem(r, 400);

    // Without authenticator config, factor creation is refused.
    let r = patch(
        &c,
        &purl,
        &ctok,
        json!([{"op": "remove", "path": "/configuration/authenticator"}]),
    );
    assert_eq!(r.status(), 200);
    let r = c
        .post(authn(&emu, "/factors"))
        .bearer_auth(&tok)
        .json(&json!({"phone_number": "447700900000", "external_user_id": "erin"}))
        .send()
        .unwrap();
    let p = assert_problem(r, 400);
    assert_eq!(p["detail"], "Project has no authenticator config");
}

/// A one-shot HTTP listener that records requests (headers, body) and answers 200.
/// (header lines, body) of one received request.
type Received = (Vec<String>, Vec<u8>);

fn callback_listener() -> (String, mpsc::Receiver<Received>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let line = line.trim_end().to_string();
                if line.is_empty() {
                    break;
                }
                headers.push(line);
            }
            let len = headers
                .iter()
                .find_map(|h| {
                    let (k, v) = h.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if tx.send((headers, body)).is_err() {
                return;
            }
        }
    });
    (format!("http://{addr}/callback"), rx)
}

#[test]
fn callback_with_digest_on_status_change() {
    let (emu, c) = start_default();
    let (cb, rx) = callback_listener();
    let i = emu.info().clone();
    let ctok = console_token(&c, &emu);
    let purl = url(
        &emu,
        &format!(
            "/console/v0.2/workspaces/{}/projects/{}",
            i.workspace_id, i.project_id
        ),
    );
    let r = patch(
        &c,
        &purl,
        &ctok,
        json!([{"op": "add", "path": "/configuration/authenticator/challenge_callback_url", "value": cb}]),
    );
    assert_eq!(r.status(), 200);

    let tok = token(&c, &emu);
    let (f, secret) = active_factor(&c, &emu, &tok, "frank");
    let fid = f["factor_id"].as_str().unwrap();
    let ch: Value = new_challenge(&c, &emu, &tok, fid, json!({"reference_id": "cb-1"}))
        .json()
        .unwrap();
    let cid = ch["challenge_id"].as_str().unwrap();
    let r = patch(
        &c,
        &authn(&emu, &format!("/factors/{fid}/challenges/{cid}")),
        &tok,
        json!([{"op": "add", "path": "/code", "value": code_for(&secret, 1)}]),
    );
    assert_eq!(r.json::<Value>().unwrap()["status"], "VERIFIED");

    let (headers, body) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("callback arrives");
    assert!(headers[0].starts_with("POST /callback "));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["challenge_id"], cid);
    assert_eq!(v["factor_id"], fid);
    assert_eq!(v["status"], "VERIFIED");
    assert_eq!(v["reference_id"], "cb-1");
    let digest = headers
        .iter()
        .find_map(|h| {
            h.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("digest"))
                .map(|(_, v)| v.trim().to_string())
        })
        .expect("digest header");
    let want = format!(
        "SHA-256={}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&body))
    );
    assert_eq!(digest, want);
    assert!(
        poll(Duration::from_secs(5), || (emu.stats().callbacks_delivered
            == 1)
            .then_some(()))
        .is_some()
    );
}

#[test]
fn push_flow_phone_check_and_approve_deny() {
    let (emu, c) = start(Options {
        push_auto: None,
        ..Options::default()
    });
    let tok = token(&c, &emu);
    let seeded = emu.seed_factor("grace", FactorType::Push);
    assert_eq!(
        totp::decode_secret(&seeded.secret_base32).unwrap().len(),
        20
    );
    let fid = seeded.factor_id.clone();

    let r = c
        .post(url(&emu, "/phone_check/v0.2/checks"))
        .bearer_auth(&tok)
        .json(&json!({"phone_number": "447700900000"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let pc: Value = r.json().unwrap();
    assert_eq!(pc["status"], "ACCEPTED");
    let check_id = pc["check_id"].as_str().unwrap();
    let check_url = pc["_links"]["check_url"]["href"].as_str().unwrap();

    // On a PUSH factor, one of check_id/check_url without the other is refused; neither makes
    // a code challenge (the app's code is the fallback).
    assert_problem(
        new_challenge(&c, &emu, &tok, &fid, json!({"check_id": check_id})),
        400,
    );
    let code_ch: Value = new_challenge(&c, &emu, &tok, &fid, json!({"reference_id": "code"}))
        .json()
        .unwrap();
    assert!(code_ch.get("check_id").is_none(), "{code_ch}");

    let body = json!({"reference_id": "p1", "check_id": check_id, "check_url": check_url, "message": "Log in?"});
    let ch: Value = new_challenge(&c, &emu, &tok, &fid, body.clone())
        .json()
        .unwrap();
    let cid = ch["challenge_id"].as_str().unwrap().to_string();
    let ch_url = authn(&emu, &format!("/factors/{fid}/challenges/{cid}"));
    let v: Value = c
        .get(&ch_url)
        .bearer_auth(&tok)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["status"], "PENDING");
    // A code is no way to resolve a push challenge.
    let r = patch(
        &c,
        &ch_url,
        &tok,
        json!([{"op": "add", "path": "/code", "value": emu.code(&fid, 0).unwrap()}]),
    );
    assert_problem(r, 400);
    assert!(emu.resolve_push(&fid, &cid, true));
    assert!(!emu.resolve_push(&fid, &cid, true));
    let v: Value = c
        .get(&ch_url)
        .bearer_auth(&tok)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["status"], "VERIFIED");

    // Deny over the control endpoint.
    let ch: Value = new_challenge(&c, &emu, &tok, &fid, body).json().unwrap();
    let cid = ch["challenge_id"].as_str().unwrap().to_string();
    let r = c
        .post(url(
            &emu,
            &format!("/_emulator/factors/{fid}/challenges/{cid}/deny"),
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(emu.challenge(&fid, &cid).unwrap().status, "FAILED");
    let r = c
        .post(url(
            &emu,
            &format!("/_emulator/factors/{fid}/challenges/{cid}/approve"),
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c.get(url(&emu, "/_emulator/challenges")).send().unwrap();
    let list: Value = r.json().unwrap();
    // The code challenge, the approved push, the denied push.
    assert_eq!(list.as_array().unwrap().len(), 3);
    assert_eq!(list[0]["reference_id"], "code");
    assert_eq!(list[2]["status"], "FAILED");
    assert_eq!(list[2]["reference_id"], "p1");
}

#[test]
fn push_auto_approves() {
    let (emu, c) = start(Options {
        push_auto: Some((Duration::from_millis(50), true)),
        ..Options::default()
    });
    let tok = token(&c, &emu);
    let fid = emu.seed_factor("heidi", FactorType::Push).factor_id;
    let body = json!({"check_id": "c", "check_url": "https://example.com/c", "message": "m"});
    let ch: Value = new_challenge(&c, &emu, &tok, &fid, body).json().unwrap();
    let cid = ch["challenge_id"].as_str().unwrap();
    let ch_url = authn(&emu, &format!("/factors/{fid}/challenges/{cid}"));
    let done = poll(Duration::from_secs(5), || {
        let v: Value = c
            .get(&ch_url)
            .bearer_auth(&tok)
            .send()
            .unwrap()
            .json()
            .unwrap();
        (v["status"] != "PENDING").then_some(v)
    })
    .expect("resolved");
    assert_eq!(done["status"], "VERIFIED");
}

#[test]
fn state_file_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let opts = Options {
        state_file: Some(state.clone()),
        ..Options::default()
    };
    let (emu, c) = start(opts.clone());
    let info = emu.info().clone();
    let tok = token(&c, &emu);
    let (f, secret) = active_factor(&c, &emu, &tok, "ivan");
    drop(emu);
    assert!(state.exists());
    let (emu2, c2) = start(opts);
    assert_eq!(emu2.info().client_id, info.client_id);
    assert_eq!(emu2.info().project_id, info.project_id);
    let fid = f["factor_id"].as_str().unwrap();
    // Tokens survive too.
    let r = c2
        .get(authn(&emu2, &format!("/factors/{fid}")))
        .bearer_auth(&tok)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(v["status"], "ACTIVE");
    assert_eq!(emu2.code(fid, 0).unwrap(), code_for(&secret, 0));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");
}

/// The spec's `Headers.v1` marks `Access-Control-Allow-Origin: *` required on every 2xx of the
/// Authenticator and console operations, beside the rate-limit headers; the token endpoint,
/// PhoneCheck and the control endpoints are not so marked.
#[test]
fn cors_header_on_every_authenticator_and_console_success() {
    let (emu, c) = start_default();
    let i = emu.info().clone();
    let tok = token(&c, &emu);
    let ctok = console_token(&c, &emu);
    let cors = |r: &reqwest::blocking::Response| {
        r.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_string())
    };
    let api = |what: &str, r: reqwest::blocking::Response, status: u16| -> Value {
        assert_eq!(r.status().as_u16(), status, "{what}");
        assert_eq!(cors(&r).as_deref(), Some("*"), "{what}");
        for h in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            assert!(r.headers().contains_key(h), "{what}: {h}");
        }
        r.json().unwrap()
    };

    let f = api(
        "factor create",
        c.post(authn(&emu, "/factors"))
            .bearer_auth(&tok)
            .json(&json!({"phone_number": "447700900000", "external_user_id": "cors"}))
            .send()
            .unwrap(),
        201,
    );
    let fid = f["factor_id"].as_str().unwrap().to_string();
    let secret = secret_of(f["url"].as_str().unwrap());
    let furl = authn(&emu, &format!("/factors/{fid}"));
    api(
        "factor list",
        c.get(authn(&emu, "/factors"))
            .bearer_auth(&tok)
            .send()
            .unwrap(),
        200,
    );
    api(
        "factor get",
        c.get(&furl).bearer_auth(&tok).send().unwrap(),
        200,
    );
    api(
        "factor patch",
        patch(
            &c,
            &furl,
            &tok,
            json!([{"op": "add", "path": "/code", "value": code_for(&secret, 0)}]),
        ),
        200,
    );
    let ch = api(
        "challenge create",
        new_challenge(&c, &emu, &tok, &fid, json!({})),
        201,
    );
    let curl = format!("{furl}/challenges/{}", ch["challenge_id"].as_str().unwrap());
    api(
        "challenge list",
        c.get(format!("{furl}/challenges"))
            .bearer_auth(&tok)
            .send()
            .unwrap(),
        200,
    );
    api(
        "challenge get",
        c.get(&curl).bearer_auth(&tok).send().unwrap(),
        200,
    );
    api(
        "challenge verify",
        patch(
            &c,
            &curl,
            &tok,
            json!([{"op": "add", "path": "/code", "value": code_for(&secret, 1)}]),
        ),
        200,
    );
    let purl = url(
        &emu,
        &format!(
            "/console/v0.2/workspaces/{}/projects/{}",
            i.workspace_id, i.project_id
        ),
    );
    api(
        "console get",
        c.get(&purl).bearer_auth(&ctok).send().unwrap(),
        200,
    );
    api(
        "console patch",
        patch(
            &c,
            &purl,
            &ctok,
            json!([{"op": "replace", "path": "/name", "value": "CORS"}]),
        ),
        200,
    );

    // Not on the token endpoint, PhoneCheck, or the control endpoints.
    let r = token_resp(&c, &emu, &i.client_id, &i.client_secret, "authenticator");
    assert_eq!(r.status(), 200);
    assert_eq!(cors(&r), None, "token");
    let r = c
        .post(url(&emu, "/phone_check/v0.2/checks"))
        .bearer_auth(&tok)
        .json(&json!({"phone_number": "447700900000"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(cors(&r), None, "phone check");
    let r = c.get(url(&emu, "/_emulator/stats")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(cors(&r), None, "control");
}

/// Waits for the wall clock's millisecond to move on, so that the next timestamp the emulator
/// takes differs from the last one (a spin of at most a millisecond, not a synchronisation).
fn next_ms() {
    let ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    let t = ms();
    while ms() == t {
        std::hint::spin_loop();
    }
}

/// `GET /factors/{id}/challenges`: the spec's ChallengeCollection (PageBasedPaginationBody,
/// PaginationLinks, Challenge items), paging, RSQL search, sort, and the factor's existence.
#[test]
fn challenge_list_paging_search_sort_hal_shape() {
    let (emu, c) = start_default();
    let tok = token(&c, &emu);
    let seeded = emu.seed_factor("lister", FactorType::Totp);
    let other = emu.seed_factor("other", FactorType::Totp);
    let fid = seeded.factor_id.clone();
    let mut ids = Vec::new();
    for n in 0..5 {
        next_ms();
        let r = new_challenge(
            &c,
            &emu,
            &tok,
            &fid,
            json!({"reference_id": format!("r{n}")}),
        );
        assert_eq!(r.status(), 201);
        let v: Value = r.json().unwrap();
        ids.push(v["challenge_id"].as_str().unwrap().to_string());
    }
    // Another factor's challenge is not listed.
    assert_eq!(
        new_challenge(
            &c,
            &emu,
            &tok,
            &other.factor_id,
            json!({"reference_id": "r0"})
        )
        .status(),
        201
    );
    // r0 verified, then r1 failed: they changed last, r1 after r0.
    next_ms();
    let base = authn(&emu, &format!("/factors/{fid}/challenges"));
    let code = emu.code(&fid, 0).unwrap();
    let v: Value = patch(
        &c,
        &format!("{base}/{}", ids[0]),
        &tok,
        json!([{"op": "add", "path": "/code", "value": code}]),
    )
    .json()
    .unwrap();
    assert_eq!(v["status"], "VERIFIED");
    let wrong = if code == "000000" { "111111" } else { "000000" };
    next_ms();
    let v: Value = patch(
        &c,
        &format!("{base}/{}", ids[1]),
        &tok,
        json!([{"op": "add", "path": "/code", "value": wrong}]),
    )
    .json()
    .unwrap();
    assert_eq!(v["status"], "FAILED");

    let get = |q: &[(&str, &str)]| -> Value {
        let r = c.get(&base).bearer_auth(&tok).query(q).send().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/hal+json");
        r.json().unwrap()
    };
    let listed = |v: &Value| -> Vec<String> {
        v["_embedded"]["challenges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["challenge_id"].as_str().unwrap().to_string())
            .collect()
    };

    // Shape: every required field of the spec's models.
    let v = get(&[("page", "1"), ("size", "2")]);
    assert_eq!(
        v["page"],
        json!({"size": 2, "number": 1, "total_pages": 3, "total_elements": 5})
    );
    for item in v["_embedded"]["challenges"].as_array().unwrap() {
        for k in ["challenge_id", "status", "created_at", "updated_at"] {
            assert!(item[k].is_string(), "{k} in {item}");
        }
        let id = item["challenge_id"].as_str().unwrap();
        assert!(item["_links"]["self"]["href"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/factors/{fid}/challenges/{id}")));
    }
    assert_eq!(listed(&v), ids[..2]);
    for l in ["self", "first", "last", "next"] {
        assert!(
            v["_links"][l]["href"]
                .as_str()
                .unwrap()
                .contains(&format!("/authenticator/v0.1/factors/{fid}/challenges?")),
            "{l}"
        );
    }
    assert!(
        v["_links"].get("prev").is_none(),
        "no page before the first"
    );
    assert!(v["_links"]["next"]["href"]
        .as_str()
        .unwrap()
        .ends_with("page=2&size=2"));
    assert!(v["_links"]["last"]["href"]
        .as_str()
        .unwrap()
        .ends_with("page=3&size=2"));
    let v = get(&[("page", "3"), ("size", "2")]);
    assert_eq!(listed(&v), ids[4..]);
    assert!(v["_links"].get("next").is_none(), "no page after the last");
    assert!(v["_links"]["prev"]["href"]
        .as_str()
        .unwrap()
        .ends_with("page=2&size=2"));
    // Defaults: page 1, size 10, oldest first.
    let v = get(&[]);
    assert_eq!(v["page"]["size"], 10);
    assert_eq!(v["page"]["number"], 1);
    assert_eq!(listed(&v), ids);
    assert!(v["_links"].get("prev").is_none() && v["_links"].get("next").is_none());

    // Search.
    let v = get(&[("search", "status==PENDING")]);
    assert_eq!(listed(&v), ids[2..]);
    assert_eq!(v["page"]["total_elements"], 3);
    let v = get(&[("search", "reference_id==r3")]);
    assert_eq!(listed(&v), ids[3..4]);
    assert_eq!(v["_embedded"]["challenges"][0]["reference_id"], "r3");
    let v = get(&[("search", "status==FAILED;reference_id==r1")]);
    assert_eq!(listed(&v), ids[1..2]);
    let v = get(&[("search", "status==VERIFIED;reference_id==r1")]);
    assert!(listed(&v).is_empty());
    assert_eq!(v["page"]["total_pages"], 0);
    // Links keep the search and the sort.
    let v = get(&[
        ("search", "status==PENDING"),
        ("sort", "created_at,desc"),
        ("size", "1"),
    ]);
    let next = v["_links"]["next"]["href"].as_str().unwrap();
    assert!(
        next.contains("search=status%3D%3DPENDING&sort=created_at%2Cdesc&page=2&size=1"),
        "{next}"
    );

    // Sort.
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(listed(&get(&[("sort", "created_at,desc")])), newest_first);
    assert_eq!(listed(&get(&[("sort", "created_at,asc")])), ids);
    assert_eq!(listed(&get(&[("sort", "created_at")])), ids);
    let by_update = listed(&get(&[("sort", "updated_at,desc")]));
    let changed = [&ids[1], &ids[0], &ids[4], &ids[3], &ids[2]];
    assert_eq!(by_update.iter().collect::<Vec<_>>(), changed);
    let v = get(&[("sort", "created_at,desc"), ("page", "2"), ("size", "2")]);
    assert_eq!(listed(&v), newest_first[2..4]);

    // Errors: unknown factor, bad paging, search or sort; a token is needed.
    let r = c
        .get(authn(
            &emu,
            "/factors/6f0c1c9e-8d55-4d43-9a37-2a3f1e0c0b11/challenges",
        ))
        .bearer_auth(&tok)
        .send()
        .unwrap();
    assert_problem(r, 404);
    for bad in [
        &[("page", "0")][..],
        &[("size", "101")][..],
        &[("search", "external_user_id==lister")][..],
        &[("search", "bogus")][..],
        &[("sort", "secret,asc")][..],
        &[("sort", "created_at,sideways")][..],
    ] {
        let r = c.get(&base).bearer_auth(&tok).query(bad).send().unwrap();
        assert_problem(r, 400);
    }
    assert_problem(c.get(&base).send().unwrap(), 401);
    assert_eq!(emu.stats().requests["challenge_list"], 21);
}
