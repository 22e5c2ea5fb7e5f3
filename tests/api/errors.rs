use reqwest::Method;
use serde_json::json;

use crate::both_engines;
use crate::helpers::{Engine, error_code, spawn_app};

both_engines!(
    bad_requests_get_clear_json_errors,
    every_response_carries_a_request_id
);

async fn bad_requests_get_clear_json_errors(engine: Engine) {
    let app = spawn_app(engine).await;

    let malformed = app
        .api(Method::POST, "/entities")
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(malformed, 400).await["code"], "malformed_json");

    let missing = app
        .api(Method::POST, "/entities")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let missing = error_code(missing, 422).await;
    assert_eq!(missing["code"], "missing_field");
    assert_eq!(missing["param"], "name");

    let wrong_type = app
        .api(Method::POST, "/entities")
        .json(&json!({"name": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(wrong_type, 422).await["param"], "name");

    let blank = app
        .api(Method::POST, "/entities")
        .json(&json!({"name": "  "}))
        .send()
        .await
        .unwrap();
    let blank = error_code(blank, 422).await;
    assert_eq!(blank["param"], "name");
    assert!(blank["message"].as_str().unwrap().contains("empty"));

    let bad_role = app
        .api(Method::POST, "/api-keys")
        .json(&json!({"name": "k", "role": "owner"}))
        .send()
        .await
        .unwrap();
    let bad_role = error_code(bad_role, 422).await;
    assert_eq!(bad_role["param"], "role");
    assert!(
        bad_role["message"].as_str().unwrap().contains("viewer"),
        "{bad_role}"
    );

    let not_json = app
        .api(Method::POST, "/entities")
        .header("content-type", "text/plain")
        .body("name=x")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(not_json, 415).await["code"],
        "unsupported_media_type"
    );

    let huge = json!({"name": "x".repeat(100 * 1024)});
    let too_large = app
        .api(Method::POST, "/entities")
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(too_large, 413).await["code"],
        "payload_too_large"
    );

    let unknown = app.api(Method::GET, "/no/such/route").send().await.unwrap();
    assert_eq!(error_code(unknown, 404).await["code"], "route_not_found");

    let wrong_method = app.api(Method::PATCH, "/entities").send().await.unwrap();
    assert_eq!(
        error_code(wrong_method, 405).await["code"],
        "method_not_allowed"
    );

    let deep = format!("{{\"name\": {}{}}}", "[".repeat(20_000), "]".repeat(20_000));
    let nested = app
        .api(Method::POST, "/entities")
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    let status = nested.status().as_u16();
    assert!(
        status == 400 || status == 422,
        "deeply nested JSON: {status}"
    );
    error_code(nested, status).await;

    let not_utf8 = app
        .api(Method::POST, "/entities")
        .header("content-type", "application/json")
        .body(vec![b'{', b'"', 0xff, 0xfe, b'"', b'}'])
        .send()
        .await
        .unwrap();
    error_code(not_utf8, 400).await;
}

async fn every_response_carries_a_request_id(engine: Engine) {
    let app = spawn_app(engine).await;
    let generated = app.api(Method::GET, "/entities").send().await.unwrap();
    let id = generated.headers()["x-request-id"].to_str().unwrap();
    assert!(id.starts_with("req_") && id.len() > 10, "{id}");

    let echoed = app
        .api(Method::GET, "/entities")
        .header("x-request-id", "client-chosen-42")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "client-chosen-42");

    let error = app
        .client
        .get(format!("{}/entities", app.address))
        .header("x-request-id", "failing-1")
        .send()
        .await
        .unwrap();
    assert_eq!(error.headers()["x-request-id"], "failing-1");
    error_code(error, 401).await;
}
