//! Tenant walls, proven over the router's own route table (the OpenAPI document, which
//! every route is registered through): a route added later cannot be forgotten here.

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_engines;
use crate::helpers::{Engine, TestApp, spawn_app};

both_engines!(
    no_route_reaches_another_tenants_objects,
    entity_limited_credentials_act_only_inside_their_entities,
);

/// The owner's objects, one of each kind a route can name.
struct Owned {
    first_entity: String,
    key: String,
    mailbox: i64,
    message: String,
    invitation: String,
    member: String,
    /// An access token of `member`, a user who is admin of the first entity only.
    member_token: String,
    /// An email sent in the first entity, scheduled (so that it can still be cancelled).
    email: String,
    /// An address on the account's suppression list.
    suppressed: &'static str,
    /// A webhook of the account, and one of its deliveries.
    webhook: String,
    delivery: String,
}

async fn set_up(app: &TestApp) -> Owned {
    let first_entity = app.admin.entity_id.clone();
    let key: Value = app
        .api(Method::POST, "/api-keys")
        .json(&json!({"name": "k", "role": "viewer"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    app.active_domain("walls.example").await;
    let mailbox = app
        .create_mailbox(json!({"domain": "walls.example", "local_part": "owner", "user_id": "u1"}))
        .await;
    let settings = json!({"provider": "smtp", "options": {"host": "smtp.walls.example", "port": 587, "auth": {"user": "u", "pass": "owner-relay-pass"}}});
    app.set_relay("walls.example", settings).await;
    for path in [
        "/v1/email-address".to_string(),
        format!("/v1/organizations/{first_entity}/email-address"),
    ] {
        let email = if path.contains("organizations") {
            "team@walls.example"
        } else {
            "office@walls.example"
        };
        app.add_sender(&path, email).await;
    }
    let invitation = app.invite("invitee@walls.example", "viewer").await;
    let member = "user_0123456789abcdef01234567".to_string();
    sqlx::query("INSERT INTO users (id, email, name, password_hash, created_at, updated_at) VALUES ($1, 'member@walls.example', 'Member', 'x', 0, 0)")
        .bind(&member)
        .execute(&app.db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO memberships (entity_id, user_id, role, created_at) VALUES ($1, $2, 'admin', 0)")
        .bind(&first_entity)
        .bind(&member)
        .execute(&app.db.pool)
        .await
        .unwrap();
    // The outbox settles first, so that the delivery worker changes nothing between the
    // snapshots taken before and after the intruders' requests.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let messages: Value = loop {
        let messages: Value = app
            .api(Method::GET, "/v2/messages")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let settled = messages["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["status"] == "sent" || m["status"] == "failed");
        if settled {
            break messages;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the outbox never settled: {messages}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let mut conn = app.db.pool.acquire().await.unwrap();
    let (member_token, _) = mailroom::identity::tokens::issue(&mut conn, &member, app.db.now())
        .await
        .unwrap();
    let later = time::OffsetDateTime::now_utc() + time::Duration::days(20);
    let later = later
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let email: Value = app
        .api(Method::POST, "/v2/emails")
        .header("x-entity-id", &first_entity)
        .json(&json!({"from": "office@walls.example", "to": "client@walls.example", "subject": "Later",
                      "text": "Hello", "scheduled_at": later}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let email = email["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{email}"))
        .to_string();
    let suppressed = "blocked@walls.example";
    let added = app
        .api(Method::POST, "/v2/suppressions")
        .json(&json!({"email": suppressed}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    let webhook: Value = app
        .api(Method::POST, "/v2/webhooks")
        .json(&json!({"url": "https://hooks.walls.invalid/mailroom", "events": ["email.sent"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let webhook = webhook["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{webhook}"))
        .to_string();
    let tested: Value = app
        .api(Method::POST, &format!("/v2/webhooks/{webhook}/test"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let delivery = tested["delivery_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{tested}"))
        .to_string();
    Owned {
        member_token,
        first_entity,
        key: key["id"].as_str().unwrap().to_string(),
        mailbox: mailbox["account"]["id"].as_i64().unwrap(),
        message: messages["items"][0]["id"].as_str().unwrap().to_string(),
        invitation: invitation["id"].as_str().unwrap().to_string(),
        member,
        email,
        suppressed,
        webhook,
        delivery,
    }
}

/// Everything the owner can read, to show that no refused request changed anything.
async fn snapshot(app: &TestApp, owned: &Owned) -> Vec<Value> {
    let mut seen = Vec::new();
    for path in [
        format!("/entities/{}", owned.first_entity),
        "/api-keys".to_string(),
        "/v2/domains/walls.example".to_string(),
        format!("/v2/email-accounts/{}", owned.mailbox),
        "/api/v2/email/settings?domain=walls.example".to_string(),
        "/v1/email-address".to_string(),
        format!("/v1/organizations/{}/email-address", owned.first_entity),
        format!("/entities/invitations/{}", owned.invitation),
        "/entities/users".to_string(),
        format!("/v2/messages/{}", owned.message),
        format!("/v2/emails/{}", owned.email),
        "/v2/suppressions".to_string(),
        format!("/v2/webhooks/{}", owned.webhook),
    ] {
        let mut value: Value = app
            .api(Method::GET, &path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        // Only the owner's own reads may move this.
        if let Some(domain) = value.get_mut("domain").and_then(|d| d.as_object_mut()) {
            domain.remove("last_checked_at");
        }
        seen.push(value);
    }
    seen
}

/// The owner's object a route template names, and a body a tenant could send to it.
fn concrete(path: &str, owned: &Owned) -> Option<(String, Value)> {
    let entity = &owned.first_entity;
    Some(match path {
        "/entities/{id}" => (format!("/entities/{entity}"), json!({})),
        "/api-keys/{id}" => (format!("/api-keys/{}", owned.key), json!({})),
        "/v2/domains/{domain}"
        | "/v2/domains/{domain}/verify"
        | "/v2/domains/{domain}/email-accounts" => {
            (path.replace("{domain}", "walls.example"), json!({}))
        }
        "/v2/domains/{domain}/dkim/rotate" => (
            path.replace("{domain}", "walls.example"),
            json!({"algorithm": "rsa"}),
        ),
        "/v2/email-accounts/{id}" | "/v2/email-accounts/{id}/password/reset" => (
            path.replace("{id}", &owned.mailbox.to_string()),
            json!({"status": "disabled", "display_name": "taken over"}),
        ),
        "/v2/email-accounts/delete" => (path.to_string(), json!({"id": owned.mailbox})),
        "/v2/messages/{id}" => (format!("/v2/messages/{}", owned.message), json!({})),
        "/v2/emails/{id}" | "/v2/emails/{id}/cancel" => {
            (path.replace("{id}", &owned.email), json!({}))
        }
        "/v2/suppressions/{email}" => (format!("/v2/suppressions/{}", owned.suppressed), json!({})),
        "/v2/webhooks/{id}"
        | "/v2/webhooks/{id}/rotate-secret"
        | "/v2/webhooks/{id}/test"
        | "/v2/webhooks/{id}/deliveries" => (
            path.replace("{id}", &owned.webhook),
            json!({"url": "https://intruder.example/hook", "enabled": false}),
        ),
        "/v2/webhooks/{id}/deliveries/{delivery_id}/replay" => (
            path.replace("{id}", &owned.webhook)
                .replace("{delivery_id}", &owned.delivery),
            json!({}),
        ),
        "/entities/invitations/{id}" | "/entities/invitations/{id}/resend" => {
            (path.replace("{id}", &owned.invitation), json!({}))
        }
        "/entities/users/{id}" => (
            format!("/entities/users/{}", owned.member),
            json!({"role": "viewer"}),
        ),
        "/api/v2/email/settings" | "/api/v2/email/settings/test" => (
            format!("{path}?domain=walls.example"),
            json!({"provider": "smtp", "options": {"host": "evil.example", "port": 25}}),
        ),
        p if p.starts_with("/v1/organizations/{id}/email-address") => (
            path.replace("{id}", entity),
            json!({"email": "intruder@walls.example", "code": "000000"}),
        ),
        _ => return None,
    })
}

/// Whether a route names an object: by a path parameter, by the `?domain=` of the SMTP
/// settings, or by an id in the body. (Lists only filter what the caller owns.)
fn names_an_object(path: &str) -> bool {
    path.contains('{')
        || path.starts_with("/api/v2/email/settings")
        || path == "/v2/email-accounts/delete"
}

async fn no_route_reaches_another_tenants_objects(engine: Engine) {
    let app = spawn_app(engine).await;
    let owned = set_up(&app).await;
    let other_account = app.other_account().await.api_key;
    let second = app.create_entity("Second").await;
    let other_entity = app
        .create_key(json!({"name": "second admin", "role": "admin", "entity_id": second}))
        .await;
    let before = snapshot(&app, &owned).await;

    let document: Value = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut checked = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let public = operation["security"].as_array().is_some_and(|s| {
                s.iter()
                    .all(|r| r.as_object().is_some_and(|o| o.is_empty()))
            });
            if public || !names_an_object(path) {
                continue;
            }
            // Creating settings for a name claims it for the caller's own account.
            if method == Method::POST && path == "/api/v2/email/settings" {
                continue;
            }
            let (url, body) = concrete(path, &owned)
                .unwrap_or_else(|| panic!("{method} {path}: add it to the walls test"));
            // An entity-scoped key of another entity is walled off the entity's own objects.
            let entity_owned = path.starts_with("/entities")
                || path.starts_with("/v1/organizations")
                || path.starts_with("/v2/emails")
                || path.starts_with("/api-keys");
            let intruders: Vec<&str> = if entity_owned {
                vec![&other_account, &other_entity]
            } else {
                vec![&other_account]
            };
            for key in intruders {
                let mut request = app.with_key(key, method.clone(), &url);
                if operation.get("requestBody").is_some() {
                    request = request.json(&body);
                }
                let response = request.send().await.unwrap();
                let status = response.status();
                let text = response.text().await.unwrap();
                assert_eq!(
                    status, 404,
                    "{method} {url} answered another tenant: {text}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 30, "only {checked} requests were checked");
    assert_eq!(
        snapshot(&app, &owned).await,
        before,
        "a refused request changed the owner's data"
    );
}

/// Account-scoped routes (DESIGN §2): domains, mailboxes, SMTP settings, the account's
/// sender address, the delivery log, suppressions, webhooks, the event log, and making
/// entities.
fn account_scoped(method: &Method, path: &str) -> bool {
    [
        "/v2/domains",
        "/v2/email-accounts",
        "/api/v2/email/settings",
        "/v2/messages",
        "/v1/email-address",
        "/v2/suppressions",
        "/v2/webhooks",
        "/v2/events",
    ]
    .iter()
    .any(|prefix| path.starts_with(prefix))
        || (method == Method::POST && path == "/entities")
}

/// A request body that passes the shape checks, so that what answers is the scope rule.
fn valid_body(path: &str, owned: &Owned) -> Value {
    match path {
        "/v2/domains" => json!({"domain": "intruder.example"}),
        "/v2/email-accounts/create" => {
            json!({"domain": "walls.example", "local_part": "intruder", "user_id": "u9"})
        }
        "/v2/email-accounts/{id}/password/reset" => json!({"password": "an intruder's password"}),
        "/v1/email-address" => json!({"email": "intruder@walls.example"}),
        "/v1/email-address/verify" => json!({"code": "000000"}),
        "/entities" => json!({"name": "Intruder"}),
        "/v2/suppressions" => json!({"email": "intruder@walls.example"}),
        "/v2/webhooks" => json!({"url": "https://intruder.example/hook", "events": ["email.sent"]}),
        _ => concrete(path, owned).map_or(json!({}), |(_, body)| body),
    }
}

async fn entity_limited_credentials_act_only_inside_their_entities(engine: Engine) {
    let app = spawn_app(engine).await;
    let owned = set_up(&app).await;
    let second = app.create_entity("Second").await;
    let other_entity = app
        .create_key(json!({"name": "second admin", "role": "admin", "entity_id": second}))
        .await;
    let own_entity = app
        .create_key(
            json!({"name": "first admin", "role": "admin", "entity_id": owned.first_entity}),
        )
        .await;
    let before = snapshot(&app, &owned).await;
    let document = app.get_json("/openapi.json").await;

    let limited = [
        ("a key of another entity", other_entity.as_str()),
        ("a key of the entity", own_entity.as_str()),
        ("an admin user of the entity", owned.member_token.as_str()),
    ];
    let mut refused = 0;
    let mut allowed = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let public = operation["security"].as_array().is_some_and(|s| {
                s.iter()
                    .all(|r| r.as_object().is_some_and(|o| o.is_empty()))
            });
            if public {
                continue;
            }
            let url = concrete(path, &owned).map_or(path.clone(), |(url, _)| url);
            let send = |key: &str| {
                let mut request = app.with_key(key, method.clone(), &url);
                if operation.get("requestBody").is_some() {
                    request = request.json(&valid_body(path, &owned));
                }
                request.send()
            };
            if account_scoped(&method, path) {
                for (who, key) in limited {
                    let answer = send(key).await.unwrap();
                    let status = answer.status();
                    let text = answer.text().await.unwrap();
                    assert_eq!(status, 403, "{method} {url} answered {who}: {text}");
                    refused += 1;
                }
            }
            // What each may read: the account key everything, the entity's admin user
            // the entity's own objects.
            if method == Method::GET {
                let readers: &[&str] = if account_scoped(&method, path) {
                    &[&app.admin.api_key]
                } else {
                    &[&app.admin.api_key, &owned.member_token]
                };
                for key in readers {
                    let answer = send(key).await.unwrap();
                    let status = answer.status();
                    assert_eq!(
                        status,
                        200,
                        "{method} {url}: {}",
                        answer.text().await.unwrap()
                    );
                    allowed += 1;
                }
            }
        }
    }
    // A user's own session is not a key's.
    for path in ["/auth/logout", "/auth/password"] {
        let answer = app
            .with_key(&own_entity, Method::POST, path)
            .json(&json!({"current_password": "x", "new_password": "a new password 1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 403, "POST {path} with a key");
    }
    assert!(refused >= 60, "only {refused} refusals were checked");
    assert!(allowed >= 20, "only {allowed} reads were checked");
    assert_eq!(
        snapshot(&app, &owned).await,
        before,
        "a refused request changed the owner's data"
    );
}
