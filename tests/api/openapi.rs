use reqwest::Method;

use crate::both_engines;
use crate::helpers::{Engine, spawn_app};

both_engines!(
    the_document_describes_every_route,
    health_endpoints_need_no_credentials
);

async fn the_document_describes_every_route(engine: Engine) {
    let app = spawn_app(engine).await;
    let response = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let document: serde_json::Value = response.json().await.unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let schemes = document["components"]["securitySchemes"]
        .as_object()
        .unwrap();
    for scheme in ["bearer", "authorization", "x-api-key", "x-access-token"] {
        assert!(schemes.contains_key(scheme), "{scheme}");
    }

    let paths = document["paths"].as_object().unwrap();
    for expected in [
        "/entities",
        "/entities/{id}",
        "/api-keys",
        "/api-keys/{id}",
        "/healthz",
        "/readyz",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(expected), "{expected} is documented");
    }
    // Every documented operation is served: none answers "no such route" or "wrong method".
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let responses = operation["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path} documents a success"
            );
            assert!(
                responses.contains_key("500"),
                "{method} {path} documents 500"
            );
            let concrete = path.replace("{id}", "xyz_000000000000000000000000");
            let answer = app.api(method.clone(), &concrete).send().await.unwrap();
            let status = answer.status().as_u16();
            let body = answer.text().await.unwrap();
            assert!(
                !body.contains("route_not_found") && status != 405,
                "{method} {path}: {status} {body}"
            );
        }
    }
}

async fn health_endpoints_need_no_credentials(engine: Engine) {
    let app = spawn_app(engine).await;
    for path in ["/healthz", "/readyz"] {
        let response = app
            .client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["status"], "ok");
    }
}
