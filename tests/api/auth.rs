use reqwest::Method;
use serde_json::json;

use crate::both_engines;
use crate::helpers::{Engine, error_code, spawn_app};

both_engines!(
    every_header_style_is_accepted,
    missing_mistyped_and_deleted_keys_are_refused,
    roles_limit_what_a_key_may_do,
    an_entity_key_stays_inside_its_entity,
    another_account_sees_only_404,
);

async fn every_header_style_is_accepted(engine: Engine) {
    let app = spawn_app(engine).await;
    let key = &app.admin.api_key;
    let url = format!("{}/entities", app.address);
    let key_id: serde_json::Value = app
        .api(Method::GET, "/api-keys")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key_id = key_id["data"][0]["id"].as_str().unwrap().to_string();

    let styles: Vec<(&str, String)> = vec![
        ("authorization", format!("Bearer {key}")),
        ("authorization", format!("bearer {key}")),
        ("authorization", key.clone()),
        ("x-api-key", key.clone()),
        ("x-access-token", key.clone()),
    ];
    for (name, value) in styles {
        let response = app
            .client
            .get(&url)
            .header(name, &value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{name}: {value}");
    }

    let with_x_key = app
        .client
        .get(&url)
        .header("X-Access-Token", key)
        .header("X-Key", &key_id)
        .send()
        .await
        .unwrap();
    assert_eq!(with_x_key.status(), 200);

    let wrong_x_key = app
        .client
        .get(&url)
        .header("X-Access-Token", key)
        .header("X-Key", "key_000000000000000000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(wrong_x_key, 401).await["code"], "key_mismatch");

    let conflicting = app
        .client
        .get(&url)
        .bearer_auth(key)
        .header("x-api-key", "mrk_other")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(conflicting, 401).await["code"],
        "conflicting_credentials"
    );
}

async fn missing_mistyped_and_deleted_keys_are_refused(engine: Engine) {
    let app = spawn_app(engine).await;
    let url = format!("{}/entities", app.address);

    let none = app.client.get(&url).send().await.unwrap();
    assert_eq!(error_code(none, 401).await["code"], "missing_credentials");

    let mistyped = format!("{}x", &app.admin.api_key[..app.admin.api_key.len() - 1]);
    for bad in [mistyped.as_str(), "mrk_", "not-a-key", "Bearer"] {
        let response = app
            .client
            .get(&url)
            .header("x-api-key", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(response, 401).await["code"],
            "invalid_credentials",
            "{bad}"
        );
    }

    let key = app
        .create_key(json!({"name": "ci", "role": "viewer"}))
        .await;
    let listed: serde_json::Value = app
        .api(Method::GET, "/api-keys")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "ci")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        app.with_key(&key, Method::GET, "/entities")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let deleted = app
        .api(Method::DELETE, &format!("/api-keys/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let after = app
        .with_key(&key, Method::GET, "/entities")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(after, 401).await["code"], "invalid_credentials");

    let again = app
        .api(Method::DELETE, &format!("/api-keys/{id}"))
        .send()
        .await
        .unwrap();
    error_code(again, 404).await;
}

async fn roles_limit_what_a_key_may_do(engine: Engine) {
    let app = spawn_app(engine).await;
    let viewer = app.create_key(json!({"name": "v", "role": "viewer"})).await;
    let editor = app.create_key(json!({"name": "e", "role": "editor"})).await;
    let admin = app.create_key(json!({"name": "a", "role": "admin"})).await;

    // (key, may read, may create entities and keys)
    for (key, role, may_administer) in [
        (&viewer, "viewer", false),
        (&editor, "editor", false),
        (&admin, "admin", true),
    ] {
        let read = app
            .with_key(key, Method::GET, "/entities")
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 200, "{role} reads");

        let create_entity = app
            .with_key(key, Method::POST, "/entities")
            .json(&json!({"name": format!("by {role}")}))
            .send()
            .await
            .unwrap();
        let create_key = app
            .with_key(key, Method::POST, "/api-keys")
            .json(&json!({"name": "k", "role": "viewer"}))
            .send()
            .await
            .unwrap();
        let list_keys = app
            .with_key(key, Method::GET, "/api-keys")
            .send()
            .await
            .unwrap();
        if may_administer {
            assert_eq!(create_entity.status(), 201);
            assert_eq!(create_key.status(), 201);
            assert_eq!(list_keys.status(), 200);
        } else {
            assert_eq!(
                error_code(create_entity, 403).await["code"],
                "insufficient_role"
            );
            assert_eq!(
                error_code(create_key, 403).await["code"],
                "insufficient_role"
            );
            assert_eq!(
                error_code(list_keys, 403).await["code"],
                "insufficient_role"
            );
        }
    }
}

async fn an_entity_key_stays_inside_its_entity(engine: Engine) {
    let app = spawn_app(engine).await;
    let second = app.create_entity("Second").await;
    let second_id = second.as_str();
    let scoped = app
        .create_key(json!({"name": "scoped", "role": "admin", "entity_id": second_id}))
        .await;

    let listed: serde_json::Value = app
        .with_key(&scoped, Method::GET, "/entities")
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
    assert_eq!(ids, vec![second_id]);

    let first = &app.admin.entity_id;
    let other_entity = app
        .with_key(&scoped, Method::GET, &format!("/entities/{first}"))
        .send()
        .await
        .unwrap();
    error_code(other_entity, 404).await;
    let via_header = app
        .with_key(&scoped, Method::GET, "/entities")
        .header("x-entity-id", first)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(via_header, 404).await["param"], "x-entity-id");

    // An admin of one entity is not an admin of the account.
    let create_entity = app
        .with_key(&scoped, Method::POST, "/entities")
        .json(&json!({"name": "nope"}))
        .send()
        .await
        .unwrap();
    error_code(create_entity, 403).await;
    let key_elsewhere = app
        .with_key(&scoped, Method::POST, "/api-keys")
        .json(&json!({"name": "k", "role": "viewer", "entity_id": first}))
        .send()
        .await
        .unwrap();
    error_code(key_elsewhere, 404).await;
    let own_keys: serde_json::Value = app
        .with_key(&scoped, Method::GET, "/api-keys")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(own_keys["data"].as_array().unwrap().len(), 1);

    // The account-wide key may pick any of its entities.
    let picked = app
        .api(Method::GET, "/entities")
        .header("x-entity-id", second_id)
        .send()
        .await
        .unwrap();
    assert_eq!(picked.status(), 200);
}

async fn another_account_sees_only_404(engine: Engine) {
    let app = spawn_app(engine).await;
    let other = app.other_account().await;
    let mine = &app.admin.entity_id;
    let listed: serde_json::Value = app
        .api(Method::GET, "/api-keys")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let my_key_id = listed["data"][0]["id"].as_str().unwrap().to_string();

    let get = app
        .with_key(&other.api_key, Method::GET, &format!("/entities/{mine}"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(get, 404).await["code"], "resource_not_found");
    let header = app
        .with_key(&other.api_key, Method::GET, "/entities")
        .header("x-entity-id", mine)
        .send()
        .await
        .unwrap();
    error_code(header, 404).await;
    let key_for_mine = app
        .with_key(&other.api_key, Method::POST, "/api-keys")
        .json(&json!({"name": "k", "role": "admin", "entity_id": mine}))
        .send()
        .await
        .unwrap();
    error_code(key_for_mine, 404).await;
    let delete = app
        .with_key(
            &other.api_key,
            Method::DELETE,
            &format!("/api-keys/{my_key_id}"),
        )
        .send()
        .await
        .unwrap();
    error_code(delete, 404).await;

    // Nothing of the owner's changed, and the other account lists only its own things.
    assert_eq!(
        app.api(Method::GET, "/entities")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let theirs: serde_json::Value = app
        .with_key(&other.api_key, Method::GET, "/entities")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["data"].as_array().unwrap().len(), 1);
    assert_eq!(theirs["data"][0]["id"], other.entity_id.as_str());
}
