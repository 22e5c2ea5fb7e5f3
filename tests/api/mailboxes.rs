//! Mailboxes (spec 003): the API as documented, and its rules.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_engines;
use crate::helpers::{Engine, error_code, spawn_app};

both_engines!(
    mailboxes_are_created_and_read_as_documented,
    bad_mailbox_input_is_refused_with_reasons,
    a_users_first_mailbox_is_the_default,
    mailboxes_are_changed_reset_and_deleted,
    other_owners_and_accounts_see_only_404,
    a_burst_of_creates_does_not_stall_reads,
);

async fn mailboxes_are_created_and_read_as_documented(engine: Engine) {
    let app = spawn_app(engine).await;
    app.active_domain("customer.com").await;
    let created = app.create_mailbox(json!({"domain": "customer.com", "local_part": "Billing", "display_name": "Billing", "user_id": "user_123"})).await;
    let account = &created["account"];
    for field in [
        "id",
        "userId",
        "user_id",
        "domain",
        "local_part",
        "address",
        "display_name",
        "status",
        "isDefault",
        "is_default",
        "created_at",
        "updated_at",
    ] {
        assert!(account.get(field).is_some(), "{field} in {account}");
    }
    assert!(account["id"].is_i64());
    assert_eq!(account["userId"], "user_123");
    assert_eq!(account["local_part"], "billing");
    assert_eq!(account["address"], "billing@customer.com");
    assert_eq!(account["status"], "active");
    assert_eq!(account["isDefault"], true);
    assert_eq!(
        created["note"],
        "Save this password now. It will not be shown again."
    );
    let password = created["password"].as_str().unwrap();
    assert!(password.len() >= 20, "{password}");
    let id = account["id"].as_i64().unwrap();

    let stored: String = sqlx::query_scalar("SELECT password_hash FROM mailboxes")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert!(
        stored.starts_with("{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$"),
        "{stored}"
    );
    assert!(!stored.contains(password));

    let fetched = app
        .get_json(&format!("/v2/email-accounts/{id}?user_id=user_123"))
        .await;
    assert_eq!(fetched["account"]["address"], "billing@customer.com");
    assert_eq!(fetched["account"]["user_id"], "user_123");
    assert!(
        fetched.to_string().find("password").is_none(),
        "never shown again"
    );

    app.create_mailbox(json!({"domain": "customer.com", "local_part": "support", "user_id": "user_456", "password": "a long enough secret"})).await;
    let by_domain = app
        .get_json("/v2/domains/customer.com/email-accounts?user_id=user_123&limit=50")
        .await;
    assert_eq!(
        by_domain["domain"],
        json!({"domain": "customer.com", "status": "active"})
    );
    assert_eq!(by_domain["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        (by_domain["limit"].as_i64(), by_domain["offset"].as_i64()),
        (Some(50), Some(0))
    );

    let listed = app.get_json("/v2/email-accounts?domain=customer.com").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
    let page = app.get_json("/v2/email-accounts?limit=1&offset=1").await;
    assert_eq!(page["items"][0]["local_part"], "support");
    let theirs = app.get_json("/v2/email-accounts?user_id=user_456").await;
    assert_eq!(theirs["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        app.get_json("/v2/email-accounts?domain=other.org").await["items"],
        json!([])
    );

    // Paging by position: each page's next_after leads to the next, the last has none.
    let first = app.get_json("/v2/email-accounts?limit=1").await;
    assert_eq!(first["items"][0]["local_part"], "billing");
    let after = first["next_after"].as_i64().expect("a next page");
    let second = app
        .get_json(&format!("/v2/email-accounts?limit=1&after={after}"))
        .await;
    assert_eq!(second["items"][0]["local_part"], "support");
    let last = app
        .get_json(&format!(
            "/v2/email-accounts?limit=1&after={}",
            second["next_after"]
        ))
        .await;
    assert_eq!(
        (last["items"].clone(), last["next_after"].clone()),
        (json!([]), json!(null))
    );
    let on_domain = app
        .get_json(&format!(
            "/v2/domains/customer.com/email-accounts?after={after}"
        ))
        .await;
    assert_eq!(on_domain["items"].as_array().unwrap().len(), 1);
    assert_eq!(on_domain["next_after"], json!(null));
    for query in [
        "limit=0",
        "limit=500",
        "offset=-5",
        "limit=ten",
        "after=-1",
        "after=x",
    ] {
        error_code(
            app.api(Method::GET, &format!("/v2/email-accounts?{query}"))
                .send()
                .await
                .unwrap(),
            422,
        )
        .await;
    }
}

async fn bad_mailbox_input_is_refused_with_reasons(engine: Engine) {
    let app = spawn_app(engine).await;
    app.active_domain("customer.com").await;
    app.add_domain("pending.org").await;
    app.create_mailbox(json!({"domain": "customer.com", "local_part": "taken"}))
        .await;

    for (body, status, param, words) in [
        (
            json!({"domain": "customer.com", "local_part": "a b"}),
            422,
            "local_part",
            "cannot contain",
        ),
        (
            json!({"domain": "customer.com", "local_part": "x".repeat(65)}),
            422,
            "local_part",
            "64",
        ),
        (
            json!({"domain": "customer.com", "local_part": "ok", "display_name": "d".repeat(129)}),
            422,
            "display_name",
            "128",
        ),
        (
            json!({"domain": "customer.com", "local_part": "ok", "display_name": "a\u{7}b"}),
            422,
            "display_name",
            "control",
        ),
        (
            json!({"domain": "customer.com", "local_part": "ok", "password": "short"}),
            422,
            "password",
            "12 to 128",
        ),
        (
            json!({"domain": "customer.com", "local_part": "jane", "password": "my-Jane-password-1"}),
            422,
            "password",
            "name",
        ),
        (
            json!({"domain": "customer.com", "local_part": "ok", "quota_mb": 0}),
            422,
            "quota_mb",
            "between",
        ),
        (
            json!({"domain": "not a domain", "local_part": "ok"}),
            422,
            "domain",
            "spaces",
        ),
        (json!({"local_part": "ok"}), 422, "domain", "missing"),
        (
            json!({"domain": "customer.com", "local_part": "TAKEN"}),
            409,
            "local_part",
            "already exists",
        ),
        (
            json!({"domain": "pending.org", "local_part": "ok"}),
            409,
            "domain",
            "verify",
        ),
        (
            json!({"domain": "unknown.org", "local_part": "ok"}),
            404,
            "domain",
            "not found",
        ),
    ] {
        let response = app
            .api(Method::POST, "/v2/email-accounts/create")
            .json(&body)
            .send()
            .await
            .unwrap();
        let error = error_code(response, status).await;
        assert_eq!(error["param"], param, "{body}: {error}");
        assert!(
            error["message"].as_str().unwrap().contains(words),
            "{body}: {error}"
        );
    }
    let pending = app
        .api(Method::POST, "/v2/email-accounts/create")
        .json(&json!({"domain": "pending.org", "local_part": "ok"}))
        .send()
        .await
        .unwrap();
    assert!(
        error_code(pending, 409).await["message"]
            .as_str()
            .unwrap()
            .contains("is pending")
    );
}

async fn a_users_first_mailbox_is_the_default(engine: Engine) {
    let app = spawn_app(engine).await;
    app.active_domain("customer.com").await;
    let first = app
        .create_mailbox(json!({"domain": "customer.com", "local_part": "first", "user_id": "u1"}))
        .await;
    let second = app
        .create_mailbox(json!({"domain": "customer.com", "local_part": "second", "user_id": "u1"}))
        .await;
    let third = app
        .create_mailbox(json!({"domain": "customer.com", "local_part": "third", "user_id": "u1"}))
        .await;
    let other = app
        .create_mailbox(json!({"domain": "customer.com", "local_part": "other", "user_id": "u2"}))
        .await;
    assert_eq!(first["account"]["isDefault"], true);
    assert_eq!(second["account"]["isDefault"], false);
    assert_eq!(third["account"]["isDefault"], false);
    assert_eq!(other["account"]["isDefault"], true, "per user");

    let deleted = app
        .api(Method::POST, "/v2/email-accounts/delete")
        .json(&json!({"id": first["account"]["id"], "user_id": "u1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let deleted: Value = deleted.json().await.unwrap();
    assert_eq!(
        deleted,
        json!({"ok": true, "deleted": {"id": first["account"]["id"], "address": "first@customer.com"}})
    );
    let remaining = app.get_json("/v2/email-accounts?user_id=u1").await;
    let defaults: Vec<(&str, bool)> = remaining["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["local_part"].as_str().unwrap(),
                m["is_default"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        defaults,
        vec![("second", true), ("third", false)],
        "the oldest remaining one"
    );
}

async fn mailboxes_are_changed_reset_and_deleted(engine: Engine) {
    let app = spawn_app(engine).await;
    app.active_domain("customer.com").await;
    let created = app.create_mailbox(json!({"domain": "customer.com", "local_part": "billing", "user_id": "user_123", "quota_mb": 500})).await;
    let id = created["account"]["id"].as_i64().unwrap();
    assert_eq!(created["account"]["quota_mb"], 500);

    let updated = app
        .api(Method::PUT, &format!("/v2/email-accounts/{id}"))
        .json(&json!({"user_id": "user_123", "display_name": "Billing Dept", "status": "disabled", "quota_mb": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    let updated: Value = updated.json().await.unwrap();
    assert_eq!(updated["account"]["status"], "disabled");
    assert_eq!(updated["account"]["display_name"], "Billing Dept");
    assert_eq!(updated["account"]["quota_mb"], Value::Null);
    let bad_status = app
        .api(Method::PUT, &format!("/v2/email-accounts/{id}"))
        .json(&json!({"status": "frozen"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(bad_status, 422).await["param"], "status");

    let before: String = sqlx::query_scalar("SELECT password_hash FROM mailboxes")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    let reset = app
        .api(
            Method::POST,
            &format!("/v2/email-accounts/{id}/password/reset"),
        )
        .json(&json!({"user_id": "user_123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 200);
    let reset: Value = reset.json().await.unwrap();
    assert_eq!(
        reset["account"],
        json!({"id": id, "domain": "customer.com", "address": "billing@customer.com"})
    );
    assert!(reset["password"].as_str().unwrap().len() >= 20);
    assert_eq!(
        reset["note"],
        "Save this password now. It will not be shown again."
    );
    let after: String = sqlx::query_scalar("SELECT password_hash FROM mailboxes")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_ne!(before, after);
    let chosen = app
        .api(
            Method::POST,
            &format!("/v2/email-accounts/{id}/password/reset"),
        )
        .json(&json!({"password": "a chosen password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        chosen.json::<Value>().await.unwrap()["password"],
        "a chosen password"
    );

    let in_use = app
        .api(Method::DELETE, "/v2/domains/customer.com")
        .send()
        .await
        .unwrap();
    assert!(
        error_code(in_use, 409).await["message"]
            .as_str()
            .unwrap()
            .contains("mailbox")
    );
    let deleted = app
        .api(Method::POST, "/v2/email-accounts/delete")
        .json(&json!({"id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    error_code(
        app.api(Method::GET, &format!("/v2/email-accounts/{id}"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    error_code(
        app.api(Method::POST, "/v2/email-accounts/delete")
            .json(&json!({"id": id}))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    error_code(
        app.api(Method::GET, "/v2/email-accounts/not-a-number")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
}

async fn other_owners_and_accounts_see_only_404(engine: Engine) {
    let app = spawn_app(engine).await;
    app.active_domain("customer.com").await;
    let created = app
        .create_mailbox(
            json!({"domain": "customer.com", "local_part": "billing", "user_id": "user_123"}),
        )
        .await;
    let id = created["account"]["id"].as_i64().unwrap();
    let other = app.other_account().await;
    let requests = |key: String, user: Option<&str>| {
        let user_query = user.map(|u| format!("?user_id={u}")).unwrap_or_default();
        let body = json!({"id": id, "user_id": user, "status": "disabled"});
        vec![
            app.with_key(
                &key,
                Method::GET,
                &format!("/v2/email-accounts/{id}{user_query}"),
            ),
            app.with_key(&key, Method::PUT, &format!("/v2/email-accounts/{id}"))
                .json(&body),
            app.with_key(
                &key,
                Method::POST,
                &format!("/v2/email-accounts/{id}/password/reset"),
            )
            .json(&body),
            app.with_key(&key, Method::POST, "/v2/email-accounts/delete")
                .json(&body),
        ]
    };
    for request in requests(app.admin.api_key.clone(), Some("someone_else")) {
        error_code(request.send().await.unwrap(), 404).await;
    }
    for request in requests(other.api_key.clone(), None) {
        error_code(request.send().await.unwrap(), 404).await;
    }
    error_code(
        app.with_key(
            &other.api_key,
            Method::GET,
            "/v2/domains/customer.com/email-accounts",
        )
        .send()
        .await
        .unwrap(),
        404,
    )
    .await;
    let theirs = app
        .with_key(&other.api_key, Method::GET, "/v2/email-accounts")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(theirs["items"], json!([]));
    let creating = app
        .with_key(&other.api_key, Method::POST, "/v2/email-accounts/create")
        .json(&json!({"domain": "customer.com", "local_part": "intruder"}))
        .send()
        .await
        .unwrap();
    error_code(creating, 404).await;
    let still = app.get_json(&format!("/v2/email-accounts/{id}")).await;
    assert_eq!(still["account"]["status"], "active", "nothing changed");
    let viewer = app.create_key(json!({"name": "v", "role": "viewer"})).await;
    let refused = app
        .with_key(&viewer, Method::POST, "/v2/email-accounts/create")
        .json(&json!({"domain": "customer.com", "local_part": "x"}))
        .send()
        .await
        .unwrap();
    error_code(refused, 403).await;
}

async fn a_burst_of_creates_does_not_stall_reads(engine: Engine) {
    let app = spawn_app(engine).await;
    app.active_domain("customer.com").await;
    let first = app
        .create_mailbox(json!({"domain": "customer.com", "local_part": "first"}))
        .await;
    let path = format!("/v2/email-accounts/{}", first["account"]["id"]);

    let started = Instant::now();
    let burst: Vec<_> = (0..16)
        .map(|i| {
            let request = app
                .api(Method::POST, "/v2/email-accounts/create")
                .json(&json!({"domain": "customer.com", "local_part": format!("burst{i}")}));
            tokio::spawn(async move { request.send().await.unwrap().status() })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let mut reads = 0;
    while !burst.iter().all(|b| b.is_finished()) {
        let asked = Instant::now();
        assert_eq!(
            app.api(Method::GET, &path).send().await.unwrap().status(),
            200
        );
        slowest = slowest.max(asked.elapsed());
        reads += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let burst_took = started.elapsed();
    for created in burst {
        assert_eq!(created.await.unwrap(), 201);
    }
    assert!(reads >= 3, "the burst took {burst_took:?}");
    assert!(
        slowest < burst_took / 3,
        "a read took {slowest:?} while the burst took {burst_took:?}"
    );
}
