//! Every error shape: 400, 401, 403, 404, 405, 413, 415, 429 (problem+json, rate headers).

mod common;

use common::*;
use serde_json::{json, Value};
use truid_emulator::{FactorType, Options};

#[test]
fn bad_requests_are_400() {
    let (emu, c) = start_default();
    let tok = token(&c, &emu);
    let post = |body: &str| {
        c.post(authn(&emu, "/factors"))
            .bearer_auth(&tok)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap()
    };
    assert_problem(post("{not json"), 400);
    assert_problem(post("[1,2]"), 400);
    assert_problem(post(""), 400);
    assert_problem(post(r#"{"phone_number":"447700900000"}"#), 400);
    assert_problem(post(r#"{"external_user_id":"x"}"#), 400);
    assert_problem(
        post(r#"{"phone_number":447700900000,"external_user_id":"x"}"#),
        400,
    );
    assert_problem(
        post(r#"{"phone_number":"447700900000","external_user_id":7}"#),
        400,
    );
    let p = assert_problem(
        post(r#"{"phone_number":"not a phone","external_user_id":"x"}"#),
        400,
    );
    assert_eq!(p["detail"], "Phone Number Validation Error");
    // `+` prefix accepted.
    let r = post(r#"{"phone_number":"+447700900000","external_user_id":"plus"}"#);
    assert_eq!(r.status(), 201);

    let fid = emu.seed_factor("u", FactorType::Totp).factor_id;
    let furl = authn(&emu, &format!("/factors/{fid}"));
    for body in [
        "not json".to_string(),
        json!({"op": "add"}).to_string(),
        json!([]).to_string(),
        json!([{"op": "add", "path": "/code"}]).to_string(),
        json!([{"op": "add", "path": "/code", "value": 123456}]).to_string(),
        json!([{"op": "replace", "path": "/status", "value": "ACTIVE"}]).to_string(),
        json!([{"op": "move", "path": "/x", "from": "/y"}]).to_string(),
    ] {
        let r = c
            .patch(&furl)
            .bearer_auth(&tok)
            .header("content-type", PATCH_CT)
            .body(body.clone())
            .send()
            .unwrap();
        assert_problem(r, 400);
    }
    // A challenge body of the wrong type.
    assert_problem(
        new_challenge(&c, &emu, &tok, &fid, json!({"reference_id": 5})),
        400,
    );
    assert_problem(new_challenge(&c, &emu, &tok, &fid, json!([1])), 400);
    // Two ops on a challenge.
    let ch: Value = new_challenge(&c, &emu, &tok, &fid, json!({}))
        .json()
        .unwrap();
    let curl = authn(
        &emu,
        &format!(
            "/factors/{fid}/challenges/{}",
            ch["challenge_id"].as_str().unwrap()
        ),
    );
    let op = json!({"op": "add", "path": "/code", "value": "123456"});
    assert_problem(patch(&c, &curl, &tok, json!([op, op])), 400);
    assert_problem(
        patch(
            &c,
            &curl,
            &tok,
            json!([{"op": "add", "path": "/status", "value": "VERIFIED"}]),
        ),
        400,
    );
    // Still pending after all that.
    assert_eq!(emu.last_challenges()[0].status, "PENDING");
}

#[test]
fn unauthorized_and_forbidden() {
    let (emu, c) = start(Options {
        token_ttl: std::time::Duration::from_secs(0),
        ..Options::default()
    });
    let list = authn(&emu, "/factors");
    assert_problem(c.get(&list).send().unwrap(), 401);
    assert_problem(c.get(&list).bearer_auth("made-up").send().unwrap(), 401);
    assert_problem(
        c.get(&list)
            .header("authorization", "Basic abc")
            .send()
            .unwrap(),
        401,
    );
    let r = c.get(&list).send().unwrap();
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    // Zero TTL: the token is expired at once.
    let tok = token(&c, &emu);
    assert_problem(c.get(&list).bearer_auth(&tok).send().unwrap(), 401);
}

#[test]
fn revoked_tokens_and_wrong_scope() {
    let (emu, c) = start_default();
    let i = emu.info().clone();
    let list = authn(&emu, "/factors");
    // A phone_check-only token may not use the Authenticator API.
    let r = token_resp(&c, &emu, &i.client_id, &i.client_secret, "phone_check");
    let pc_tok = r.json::<Value>().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let p = assert_problem(c.get(&list).bearer_auth(&pc_tok).send().unwrap(), 403);
    assert!(p["detail"].as_str().unwrap().contains("authenticator"));
    // A console token either.
    let ctok = console_token(&c, &emu);
    assert_problem(c.get(&list).bearer_auth(&ctok).send().unwrap(), 403);
    // An authenticator token may not create PhoneChecks.
    let r = token_resp(&c, &emu, &i.client_id, &i.client_secret, "authenticator");
    let a_tok = r.json::<Value>().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .post(url(&emu, "/phone_check/v0.2/checks"))
        .bearer_auth(&a_tok)
        .json(&json!({"phone_number": "447700900000"}))
        .send()
        .unwrap();
    assert_problem(r, 403);

    assert_eq!(
        c.get(&list).bearer_auth(&a_tok).send().unwrap().status(),
        200
    );
    emu.revoke_tokens();
    assert_problem(c.get(&list).bearer_auth(&a_tok).send().unwrap(), 401);
    let tok = token(&c, &emu);
    assert_eq!(c.get(&list).bearer_auth(&tok).send().unwrap().status(), 200);
    let r = c
        .post(url(&emu, "/_emulator/tokens/revoke"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_problem(c.get(&list).bearer_auth(&tok).send().unwrap(), 401);
}

#[test]
fn not_found_and_method_not_allowed() {
    let (emu, c) = start_default();
    let tok = token(&c, &emu);
    let fid = emu.seed_factor("u", FactorType::Totp).factor_id;
    for path in [
        "/nope".to_string(),
        "/".to_string(),
        "/authenticator/v0.1/unknown".to_string(),
        "/authenticator/v0.1/factors/00000000-0000-4000-8000-000000000000".to_string(),
        format!(
            "/authenticator/v0.1/factors/{fid}/challenges/00000000-0000-4000-8000-000000000000"
        ),
        "/authenticator/v0.1/factors/%FF%FE".to_string(),
        "/phone_check/v0.2/checks/unknown".to_string(),
    ] {
        let r = c.get(url(&emu, &path)).bearer_auth(&tok).send().unwrap();
        assert_problem(r, 404);
    }
    assert_problem(
        new_challenge(&c, &emu, &tok, "unknown-factor", json!({})),
        404,
    );
    let r = patch(
        &c,
        &authn(&emu, "/factors/unknown"),
        &tok,
        json!([{"op": "replace", "path": "/status", "value": "INACTIVE"}]),
    );
    assert_problem(r, 404);
    let r = c
        .delete(authn(&emu, &format!("/factors/{fid}")))
        .bearer_auth(&tok)
        .send()
        .unwrap();
    assert!(r.headers().contains_key("allow"));
    assert_problem(r, 405);
    assert_problem(c.get(url(&emu, "/oauth2/v1/token")).send().unwrap(), 405);
}

#[test]
fn payload_too_large_413() {
    let (emu, c) = start_default();
    let tok = token(&c, &emu);
    let big = format!(
        r#"{{"phone_number":"447700900000","external_user_id":"{}"}}"#,
        "a".repeat(70 * 1024)
    );
    let r = c
        .post(authn(&emu, "/factors"))
        .bearer_auth(&tok)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .unwrap();
    assert_problem(r, 413);
    // Without Content-Length (chunked), the limit holds too.
    let r = c
        .post(authn(&emu, "/factors"))
        .bearer_auth(&tok)
        .header("content-type", "application/json")
        .body(reqwest::blocking::Body::new(std::io::Cursor::new(
            vec![b' '; 100 * 1024],
        )))
        .send()
        .unwrap();
    assert!(r.headers().get("content-length").is_some());
    assert_problem(r, 413);
    // Just under the limit is parsed (and refused for other reasons or accepted).
    let ok = format!(
        r#"{{"phone_number":"447700900000","external_user_id":"{}"}}"#,
        "a".repeat(60 * 1024)
    );
    let r = c
        .post(authn(&emu, "/factors"))
        .bearer_auth(&tok)
        .header("content-type", "application/json")
        .body(ok)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[test]
fn unsupported_media_type_415() {
    let (emu, c) = start_default();
    let tok = token(&c, &emu);
    let fid = emu.seed_factor("u", FactorType::Totp).factor_id;
    let body = json!([{"op": "replace", "path": "/status", "value": "INACTIVE"}]).to_string();
    let furl = authn(&emu, &format!("/factors/{fid}"));
    for ct in [None, Some("application/json"), Some("text/plain")] {
        let mut rb = c.patch(&furl).bearer_auth(&tok).body(body.clone());
        if let Some(ct) = ct {
            rb = rb.header("content-type", ct);
        }
        assert_problem(rb.send().unwrap(), 415);
    }
    let ch: Value = new_challenge(&c, &emu, &tok, &fid, json!({}))
        .json()
        .unwrap();
    let curl = authn(
        &emu,
        &format!(
            "/factors/{fid}/challenges/{}",
            ch["challenge_id"].as_str().unwrap()
        ),
    );
    let r = c
        .patch(&curl)
        .bearer_auth(&tok)
        .json(&json!([{"op": "add", "path": "/code", "value": "123456"}]))
        .send()
        .unwrap();
    assert_problem(r, 415);
    let r = c
        .post(authn(&emu, "/factors"))
        .bearer_auth(&tok)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .unwrap();
    assert_problem(r, 415);
    // With the right type and a charset parameter it works.
    let r = c
        .patch(&furl)
        .bearer_auth(&tok)
        .header("content-type", "application/json-patch+json; charset=utf-8")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn rate_limit_429_with_retry_after() {
    let (emu, c) = start(Options {
        rate_limit: 3,
        ..Options::default()
    });
    let tok = token(&c, &emu); // 1
    let list = authn(&emu, "/factors");
    let r = c.get(&list).bearer_auth(&tok).send().unwrap(); // 2
    assert_eq!(r.headers()["x-ratelimit-limit"], "3");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "1");
    let reset: u64 = r.headers()["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&reset));
    let r = c.get(&list).bearer_auth(&tok).send().unwrap(); // 3
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    let r = c.get(&list).bearer_auth(&tok).send().unwrap(); // 4
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    assert_problem(r, 429);
    // Control endpoints are not limited.
    assert_eq!(
        c.get(url(&emu, "/_emulator/stats"))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(emu.stats().rate_limited, 1);
}
