//! Fault injection (library and control endpoint), keep-alive, concurrency.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use truid_emulator::{FactorType, Fault, FaultKind, Route};

fn once(route: Route, kind: FaultKind) -> Fault {
    Fault {
        route,
        kind,
        times: Some(1),
    }
}

#[test]
fn each_fault_kind_is_observable() {
    let (emu, c) = start_default();
    let tok = token(&c, &emu);
    let fid = emu.seed_factor("u", FactorType::Totp).factor_id;
    let furl = authn(&emu, &format!("/factors/{fid}"));
    let get = || c.get(&furl).bearer_auth(&tok).send();

    emu.set_fault(once(
        Route::FactorGet,
        FaultKind::Latency(Duration::from_millis(300)),
    ));
    let t = Instant::now();
    assert_eq!(get().unwrap().status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(300));

    emu.set_fault(once(Route::FactorGet, FaultKind::Status(503)));
    assert_problem(get().unwrap(), 503);

    emu.set_fault(once(
        Route::FactorGet,
        FaultKind::TooManyRequests {
            retry_after: Some(7),
        },
    ));
    let r = get().unwrap();
    assert_eq!(r.headers()["retry-after"], "7");
    assert_problem(r, 429);

    emu.set_fault(once(Route::FactorGet, FaultKind::NotJson));
    let r = get().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "<html>oops");

    emu.set_fault(once(Route::FactorGet, FaultKind::WrongShape));
    assert_eq!(
        get().unwrap().json::<Value>().unwrap(),
        json!({"unexpected": true})
    );

    emu.set_fault(once(Route::FactorGet, FaultKind::Huge(3_000_000)));
    let r = get().unwrap();
    assert_eq!(r.content_length(), Some(3_000_000));
    assert_eq!(r.bytes().unwrap().len(), 3_000_000);

    emu.set_fault(once(Route::FactorGet, FaultKind::Drop));
    assert!(get().is_err());

    emu.set_fault(once(Route::FactorGet, FaultKind::DropMidBody));
    let mut r = get().unwrap();
    assert_eq!(r.content_length(), Some(1000));
    let mut buf = Vec::new();
    assert!(r.read_to_end(&mut buf).is_err());
    assert!(buf.len() < 1000);

    emu.set_fault(once(Route::FactorGet, FaultKind::Unauthorized));
    assert_problem(get().unwrap(), 401);

    emu.set_fault(once(Route::FactorGet, FaultKind::Hang));
    let short = client(&emu, Duration::from_millis(500));
    let t = Instant::now();
    let e = short.get(&furl).bearer_auth(&tok).send().unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));

    // All used up: normal again. Another route was never touched.
    assert_eq!(get().unwrap().status(), 200);
    assert_eq!(emu.stats().faults_applied, 10);

    // Until cleared.
    emu.set_fault(Fault {
        route: Route::Any,
        kind: FaultKind::Status(500),
        times: None,
    });
    assert_problem(get().unwrap(), 500);
    assert_problem(
        c.get(authn(&emu, "/factors"))
            .bearer_auth(&tok)
            .send()
            .unwrap(),
        500,
    );
    emu.clear_faults();
    assert_eq!(get().unwrap().status(), 200);
}

#[test]
fn faults_over_the_control_endpoint() {
    let (emu, c) = start_default();
    let tok = token(&c, &emu);
    let faults = url(&emu, "/_emulator/faults");
    let r = c
        .post(&faults)
        .json(&json!({"route": "token", "kind": "status", "status": 502, "times": 1}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let listed: Value = r.json().unwrap();
    assert_eq!(listed["faults"][0]["kind"], "status");
    let i = emu.info().clone();
    assert_problem(
        token_resp(&c, &emu, &i.client_id, &i.client_secret, "authenticator"),
        502,
    );
    assert_eq!(
        token_resp(&c, &emu, &i.client_id, &i.client_secret, "authenticator").status(),
        200
    );

    // Every JSON shape parses.
    for f in [
        json!({"kind": "latency", "ms": 1}),
        json!({"route": "challenge_verify", "kind": "too_many_requests"}),
        json!({"route": "challenge_create", "kind": "too_many_requests", "retry_after": 3}),
        json!({"route": "challenge_get", "kind": "not_json"}),
        json!({"route": "factor_list", "kind": "wrong_shape"}),
        json!({"route": "factor_get", "kind": "huge", "bytes": 10}),
        json!({"route": "factor_create", "kind": "drop"}),
        json!({"route": "factor_patch", "kind": "drop_mid_body"}),
        json!({"route": "console", "kind": "hang"}),
        json!({"route": "phone_check", "kind": "unauthorized", "times": 2}),
    ] {
        let r = c.post(&faults).json(&f).send().unwrap();
        assert_eq!(r.status(), 200, "{f}");
    }
    for bad in [
        json!({"kind": "nope"}),
        json!({"kind": "status"}),
        json!({"route": "x", "kind": "drop"}),
        json!([]),
    ] {
        assert_eq!(
            c.post(&faults).json(&bad).send().unwrap().status(),
            400,
            "{bad}"
        );
    }
    let listed: Value = c.get(&faults).send().unwrap().json().unwrap();
    assert_eq!(listed["faults"].as_array().unwrap().len(), 10);
    // The not_json fault on challenge_get is live; the factor list is wrong-shaped.
    let v: Value = c
        .get(authn(&emu, "/factors"))
        .bearer_auth(&tok)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v, json!({"unexpected": true}));
    let r = c.delete(&faults).send().unwrap();
    assert_eq!(r.json::<Value>().unwrap(), json!({"faults": []}));
    let v: Value = c
        .get(authn(&emu, "/factors"))
        .bearer_auth(&tok)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(v["_embedded"]["factors"].is_array());

    // The other control endpoints.
    let r = c
        .post(url(&emu, "/_emulator/seed"))
        .json(&json!({"external_user_id": "zed", "type": "TOTP"}))
        .send()
        .unwrap();
    let s: Value = r.json().unwrap();
    let fid = s["factor_id"].as_str().unwrap();
    let secret = truid_emulator::totp::decode_secret(s["secret"].as_str().unwrap()).unwrap();
    let r: Value = c
        .get(url(
            &emu,
            &format!("/_emulator/factors/{fid}/code?offset=1"),
        ))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(r["code"], code_for(&secret, 1));
    assert_eq!(
        c.get(url(&emu, "/_emulator/factors/nope/code"))
            .send()
            .unwrap()
            .status(),
        404
    );
    let st: Value = c
        .get(url(&emu, "/_emulator/stats"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(st["tokens_issued"], 2);
    assert!(st["requests"]["token"].as_u64().unwrap() >= 3);
    let info: Value = c
        .get(url(&emu, "/_emulator/info"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(info["base_url"], emu.info().base_url.as_str());
}

#[test]
fn keep_alive_one_handshake_for_three_requests() {
    let (emu, c) = start_default();
    let tok = token(&c, &emu);
    assert_eq!(
        c.get(authn(&emu, "/factors"))
            .bearer_auth(&tok)
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(authn(&emu, "/factors"))
            .bearer_auth(&tok)
            .send()
            .unwrap()
            .status(),
        200
    );
    let s = emu.stats();
    assert_eq!(s.tls_handshakes, 1);
    assert_eq!(s.connections_accepted, 1);
    assert_eq!(s.requests["token"], 1);
    assert_eq!(s.requests["factor_list"], 2);
}

#[test]
fn hundreds_of_concurrent_requests() {
    let (emu, c) = start_default();
    let tok = token(&c, &emu);
    let fid = emu.seed_factor("load", FactorType::Totp).factor_id;
    let furl = authn(&emu, &format!("/factors/{fid}"));
    let ca = emu.info().ca_file.clone().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ok = rt.block_on(async move {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(&ca))
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..300 {
            let (client, furl, tok) = (client.clone(), furl.clone(), tok.clone());
            tasks.push(tokio::spawn(async move {
                client
                    .get(&furl)
                    .bearer_auth(&tok)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }));
        }
        let mut ok = 0;
        for t in tasks {
            if let Ok(Ok(200)) = t.await {
                ok += 1;
            }
        }
        ok
    });
    assert_eq!(ok, 300);
    assert_eq!(emu.stats().requests["factor_get"], 300);
}
