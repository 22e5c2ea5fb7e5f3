use reqwest::Method;
use serde_json::json;

use crate::both_engines;
use crate::helpers::{Engine, error_code, spawn_app};

both_engines!(
    entities_are_created_listed_and_fetched,
    a_key_secret_is_shown_once_and_stored_as_a_digest
);

async fn entities_are_created_listed_and_fetched(engine: Engine) {
    let app = spawn_app(engine).await;
    let created = app
        .api(Method::POST, "/entities")
        .json(&json!({"name": "  Billing team "}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: serde_json::Value = created.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("ent_") && id.len() == 28, "{id}");
    assert_eq!(created["name"], "Billing team");
    assert_eq!(created["account_id"], app.admin.account_id.as_str());
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));

    let fetched: serde_json::Value = app
        .api(Method::GET, &format!("/entities/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, created);

    let listed: serde_json::Value = app
        .api(Method::GET, "/entities")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![app.admin.entity_id.as_str(), id],
        "first entity first"
    );

    let missing = app
        .api(Method::GET, "/entities/ent_000000000000000000000000")
        .send()
        .await
        .unwrap();
    error_code(missing, 404).await;
}

async fn a_key_secret_is_shown_once_and_stored_as_a_digest(engine: Engine) {
    let app = spawn_app(engine).await;
    let created = app
        .api(Method::POST, "/api-keys")
        .json(&json!({"name": "deploy bot", "role": "editor"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: serde_json::Value = created.json().await.unwrap();
    let secret = created["api_key"].as_str().unwrap();
    assert!(
        secret.starts_with("mrk_") && secret.len() == 68,
        "256 bits in hex: {secret}"
    );
    assert!(secret.starts_with(created["prefix"].as_str().unwrap()));
    assert_eq!(created["role"], "editor");
    assert_eq!(created["entity_id"], serde_json::Value::Null);

    let listed = app
        .api(Method::GET, "/api-keys")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listed.contains("deploy bot"));
    assert!(!listed.contains(secret), "a list never shows a secret");
    assert!(!listed.contains(&app.admin.api_key));

    let stored: Vec<String> = sqlx::query_scalar("SELECT secret_hash FROM api_keys")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    for hash in stored {
        assert_eq!(hash.len(), 64);
        assert!(!hash.contains(&secret[4..]) && !hash.contains(&app.admin.api_key[4..]));
    }
    if engine == Engine::Sqlite {
        let file = std::fs::read(app.dir.path().join("mailroom.db")).unwrap();
        let wal = std::fs::read(app.dir.path().join("mailroom.db-wal")).unwrap_or_default();
        for bytes in [file, wal] {
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains(&secret[4..]),
                "the secret is not in the database file"
            );
        }
    }
}
