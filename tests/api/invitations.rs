//! Invitations (spec 001), users, login, roles and members.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_engines;
use crate::helpers::browser::Browser;
use crate::helpers::{Engine, error_code, spawn_app_with_relay, token_of};

both_engines!(
    an_invitation_is_accepted_in_a_real_browser,
    the_accepted_role_is_the_limit,
    resending_replaces_the_link,
    two_concurrent_accepts_make_one_user,
    expired_and_cancelled_invitations,
    an_existing_user_joins_signed_in,
    login_works_and_is_rate_limited,
    an_entity_keeps_its_last_admin,
    invitations_stay_inside_their_entity,
);

async fn an_invitation_is_accepted_in_a_real_browser(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |_| {}).await;
    let invitation = app.invite("newuser@example.com", "editor").await;
    let id = invitation["id"].as_str().unwrap();
    assert!(id.starts_with("einv_") && id.len() == 29, "{id}");
    for field in [
        "entity_id",
        "email",
        "name",
        "role",
        "status",
        "invited_by",
        "invited_by_user_id",
        "expires_at",
        "accepted_at",
        "created_at",
        "updated_at",
    ] {
        assert!(invitation.get(field).is_some(), "{field}: {invitation}");
    }
    assert_eq!(invitation["status"], "pending");
    assert_eq!(invitation["entity_id"], app.admin.entity_id.as_str());
    assert!(
        invitation["invited_by"]
            .as_str()
            .unwrap()
            .starts_with("key_")
    );
    let link = relay.invitation_link("newuser@example.com", 1).await;
    assert!(
        link.starts_with(&format!("{}/invitations/accept?token=", app.address)),
        "{link}"
    );

    let Some(browser) = Browser::start().await else {
        return;
    };
    browser.open(&link).await;
    browser.type_into("#name", "New User").await;
    browser.type_into("#password", "a strong password").await;
    browser.click("#accept").await;
    let result = browser.wait_for("#result").await;
    assert!(result.contains("You have joined"), "{result}");

    let accepted: Value = app
        .api(Method::GET, &format!("/entities/invitations/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(accepted["status"], "accepted");
    assert!(accepted["accepted_at"].is_string());
    let login = app
        .client
        .post(format!("{}/auth/login", app.address))
        .json(&json!({"email": "newuser@example.com", "password": "a strong password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let members: Value = app
        .api(Method::GET, "/entities/users")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(members["data"][0]["name"], "New User");
    assert_eq!(members["data"][0]["role"], "editor");
}

async fn the_accepted_role_is_the_limit(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |_| {}).await;
    app.invite("ed@example.com", "editor").await;
    let token = token_of(&relay.invitation_link("ed@example.com", 1).await);
    let accepted = app.accept_invitation(&token, "Ed", "editor password").await;
    assert_eq!(accepted.status(), 200);
    let accepted: Value = accepted.json().await.unwrap();
    assert_eq!(accepted["message"], "Invitation accepted");
    assert_eq!(accepted["entity_id"], app.admin.entity_id.as_str());
    assert!(accepted["user_id"].as_str().unwrap().starts_with("user_"));
    let access = accepted["access_token"].as_str().unwrap().to_string();
    assert!(access.starts_with("mrt_") && access.len() == 68);

    // Every header style carries it.
    for (name, value) in [
        ("authorization", format!("Bearer {access}")),
        ("x-api-key", access.clone()),
        ("x-access-token", access.clone()),
    ] {
        let response = app
            .client
            .get(format!("{}/entities/invitations", app.address))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{name}");
    }
    // The domain is the account's, added with its key; the entity's editor names it.
    app.add_domain("ed.example").await;
    let editing = app
        .with_key(
            &access,
            Method::POST,
            &format!("/v1/organizations/{}/email-address", app.admin.entity_id),
        )
        .json(&json!({"email": "ed@ed.example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        editing.status(),
        201,
        "an editor writes the entity's sender"
    );
    // But cannot add a domain to the account through it: domains are the account's.
    let new_domain = app
        .with_key(
            &access,
            Method::POST,
            &format!("/v1/organizations/{}/email-address", app.admin.entity_id),
        )
        .json(&json!({"email": "ed@elsewhere.example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(new_domain, 422).await["param"], "email");
    let domains: Value = app.get_json("/v2/domains").await;
    assert_eq!(domains["items"].as_array().unwrap().len(), 1, "{domains}");
    // Domains are the account's: a user acts only inside their entities.
    let domains = app
        .with_key(&access, Method::POST, "/v2/domains")
        .json(&json!({"domain": "ed.example"}))
        .send()
        .await
        .unwrap();
    error_code(domains, 403).await;
    let inviting = app
        .with_key(&access, Method::POST, "/entities/invitations")
        .json(&json!({"email": "x@example.com", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    error_code(inviting, 403).await;
    let keys = app
        .with_key(&access, Method::POST, "/api-keys")
        .json(&json!({"name": "k", "role": "admin"}))
        .send()
        .await
        .unwrap();
    error_code(keys, 403).await;

    // Nothing secret is kept in clear.
    let tokens: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM access_tokens")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert!(
        tokens
            .iter()
            .all(|t| t.len() == 64 && !t.contains(&access[4..]))
    );
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert!(hash.starts_with("{ARGON2ID}$argon2id$"));
    if engine == Engine::Sqlite {
        for file in ["mailroom.db", "mailroom.db-wal"] {
            let bytes = std::fs::read(app.dir.path().join(file)).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains("editor password")
                    && !text.contains(&access[4..])
                    && !text.contains(&token[4..])
            );
        }
    }
}

async fn resending_replaces_the_link(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |_| {}).await;
    let invitation = app.invite("jo@example.com", "viewer").await;
    let id = invitation["id"].as_str().unwrap();
    let old = token_of(&relay.invitation_link("jo@example.com", 1).await);
    let resend = || app.api(Method::POST, &format!("/entities/invitations/{id}/resend"));

    let too_soon = resend().send().await.unwrap();
    assert!(too_soon.headers().contains_key("retry-after"));
    error_code(too_soon, 429).await;
    app.advance_clock(Duration::from_secs(61)).await;
    let resent = resend().send().await.unwrap();
    assert_eq!(resent.status(), 200);
    let resent: Value = resent.json().await.unwrap();
    assert_eq!(resent["message"], "Invitation resent");
    assert!(resent["expires_at"].is_string());
    let new = token_of(&relay.invitation_link("jo@example.com", 2).await);
    assert_ne!(old, new);
    error_code(
        app.accept_invitation(&old, "Jo", "jo's password 1").await,
        404,
    )
    .await;
    assert_eq!(
        app.accept_invitation(&new, "Jo", "jo's password 1")
            .await
            .status(),
        200
    );
    let closed = resend().send().await.unwrap();
    error_code(closed, 409).await;

    // An invitation over 30 days old is not resent: invite again.
    let old_one = app.invite("late@example.com", "viewer").await;
    app.advance_clock(Duration::from_secs(31 * 24 * 3600)).await;
    let refused = app
        .api(
            Method::POST,
            &format!(
                "/entities/invitations/{}/resend",
                old_one["id"].as_str().unwrap()
            ),
        )
        .send()
        .await
        .unwrap();
    assert!(
        error_code(refused, 409).await["message"]
            .as_str()
            .unwrap()
            .contains("invite again")
    );
}

async fn two_concurrent_accepts_make_one_user(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |_| {}).await;
    app.invite("race@example.com", "viewer").await;
    let token = token_of(&relay.invitation_link("race@example.com", 1).await);
    let (a, b) = tokio::join!(
        app.accept_invitation(&token, "A", "password number one"),
        app.accept_invitation(&token, "B", "password number two")
    );
    let mut statuses = vec![a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, vec![200, 409]);
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    let members: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM memberships")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!((users, members), (1, 1));
}

async fn expired_and_cancelled_invitations(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |_| {}).await;
    let expiring = app.invite("late@example.com", "viewer").await;
    let token = token_of(&relay.invitation_link("late@example.com", 1).await);
    // A day past its seven days (and so long after it was last sent).
    app.advance_clock(Duration::from_secs(8 * 24 * 3600)).await;
    error_code(
        app.accept_invitation(&token, "Late", "a late password")
            .await,
        410,
    )
    .await;
    let listed: Value = app
        .api(Method::GET, "/entities/invitations?status=expired")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"][0]["id"], expiring["id"]);
    let revived = app
        .api(
            Method::POST,
            &format!(
                "/entities/invitations/{}/resend",
                expiring["id"].as_str().unwrap()
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(revived.status(), 200, "an expired invitation can be resent");

    let cancelled = app.invite("gone@example.com", "viewer").await;
    let token = token_of(&relay.invitation_link("gone@example.com", 3).await);
    let path = format!(
        "/entities/invitations/{}",
        cancelled["id"].as_str().unwrap()
    );
    let response = app.api(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"message": "Invitation cancelled"})
    );
    error_code(
        app.accept_invitation(&token, "Gone", "a gone password")
            .await,
        404,
    )
    .await;
    error_code(app.api(Method::DELETE, &path).send().await.unwrap(), 409).await;
    error_code(
        app.accept_invitation("inv_unknown", "X", "some password here")
            .await,
        404,
    )
    .await;

    // One pending invitation per email; bad input is refused.
    app.invite("twice@example.com", "viewer").await;
    let twice = app
        .api(Method::POST, "/entities/invitations")
        .json(&json!({"email": "twice@example.com", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    error_code(twice, 409).await;
    for (body, param) in [
        (json!({"email": "nope", "role": "viewer"}), "email"),
        (json!({"email": "a@example.com", "role": "owner"}), "role"),
        (
            json!({"email": "a@example.com", "role": "viewer", "expires_in_days": 31}),
            "expires_in_days",
        ),
        (
            json!({"email": "a@example.com", "role": "viewer", "expires_in_days": 0}),
            "expires_in_days",
        ),
    ] {
        let response = app
            .api(Method::POST, "/entities/invitations")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(response, 422).await["param"], param);
    }
    let accepted = app.invite("done@example.com", "viewer").await;
    let token = token_of(&relay.invitation_link("done@example.com", 5).await);
    let short = app.accept_invitation(&token, "Done", "short").await;
    assert_eq!(error_code(short, 422).await["param"], "password");
    assert_eq!(
        app.accept_invitation(&token, "Done", "long enough password")
            .await
            .status(),
        200
    );
    let cancel_accepted = app
        .api(
            Method::DELETE,
            &format!("/entities/invitations/{}", accepted["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    error_code(cancel_accepted, 409).await;
}

async fn an_existing_user_joins_signed_in(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |_| {}).await;
    app.invite("sam@example.com", "viewer").await;
    let first = token_of(&relay.invitation_link("sam@example.com", 1).await);
    assert_eq!(
        app.accept_invitation(&first, "Sam", "sam's real password")
            .await
            .status(),
        200
    );

    let second = app.create_entity("Second").await;
    let second_id = second.as_str();
    let response = app
        .api(Method::POST, "/entities/invitations")
        .header("x-entity-id", second_id)
        .json(&json!({"email": "sam@example.com", "role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let token = token_of(&relay.invitation_link("sam@example.com", 2).await);
    let session: Value = app
        .login("sam@example.com", "sam's real password")
        .await
        .json()
        .await
        .unwrap();
    let joined = app
        .accept_signed_in(&token, session["access_token"].as_str().unwrap())
        .await;
    assert_eq!(joined.status(), 200);
    let joined: Value = joined.json().await.unwrap();
    assert_eq!(joined["entity_id"], second_id);
    let name: String = sqlx::query_scalar("SELECT name FROM users")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(name, "Sam", "the user is never overwritten");
    let token = joined["access_token"].as_str().unwrap();
    let mine: Value = app
        .with_key(token, Method::GET, "/entities")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut entities: Vec<&str> = mine["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    entities.sort();
    let mut expected = vec![app.admin.entity_id.as_str(), second_id];
    expected.sort();
    assert_eq!(
        entities, expected,
        "a user lists the entities they belong to"
    );
    let in_second = app
        .with_key(token, Method::GET, "/entities/users")
        .header("x-entity-id", second_id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        in_second.json::<Value>().await.unwrap()["data"][0]["role"],
        "admin"
    );
}

async fn login_works_and_is_rate_limited(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |_| {}).await;
    app.invite("lee@example.com", "viewer").await;
    let token = token_of(&relay.invitation_link("lee@example.com", 1).await);
    let accepted: Value = app
        .accept_invitation(&token, "Lee", "lee's own password")
        .await
        .json()
        .await
        .unwrap();
    let login = |password: &str| {
        app.client
            .post(format!("{}/auth/login", app.address))
            .json(&json!({"email": "lee@example.com", "password": password}))
    };

    let session = login("lee's own password").send().await.unwrap();
    assert_eq!(session.status(), 200);
    let session: Value = session.json().await.unwrap();
    assert_eq!(session["user_id"], accepted["user_id"]);
    assert!(session["expires_at"].is_string());
    let access = session["access_token"].as_str().unwrap();
    assert_eq!(
        app.with_key(access, Method::GET, "/entities/users")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    for _ in 0..5 {
        error_code(login("a wrong password").send().await.unwrap(), 401).await;
    }
    let limited = login("lee's own password").send().await.unwrap();
    assert!(limited.headers().contains_key("retry-after"));
    error_code(limited, 429).await;
    let unknown = app
        .client
        .post(format!("{}/auth/login", app.address))
        .json(&json!({"email": "who@example.com", "password": "whatever password"}))
        .send()
        .await
        .unwrap();
    error_code(unknown, 401).await;
}

async fn an_entity_keeps_its_last_admin(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |_| {}).await;
    app.invite("first@example.com", "admin").await;
    let token = token_of(&relay.invitation_link("first@example.com", 1).await);
    let first: Value = app
        .accept_invitation(&token, "First", "first admin password")
        .await
        .json()
        .await
        .unwrap();
    let first_id = first["user_id"].as_str().unwrap();
    let path = format!("/entities/users/{first_id}");
    // The rule binds those who act inside the entity: its own admin key here.
    let inside = app
        .create_key(json!({"name": "inside", "role": "admin", "entity_id": app.admin.entity_id}))
        .await;
    error_code(
        app.with_key(&inside, Method::PATCH, &path)
            .json(&json!({"role": "viewer"}))
            .send()
            .await
            .unwrap(),
        409,
    )
    .await;
    error_code(
        app.with_key(&inside, Method::DELETE, &path)
            .send()
            .await
            .unwrap(),
        409,
    )
    .await;

    app.invite("second@example.com", "admin").await;
    let token = token_of(&relay.invitation_link("second@example.com", 2).await);
    let second: Value = app
        .accept_invitation(&token, "Second", "second admin password")
        .await
        .json()
        .await
        .unwrap();
    let demoted = app
        .with_key(&inside, Method::PATCH, &path)
        .json(&json!({"role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(demoted.status(), 200);
    assert_eq!(demoted.json::<Value>().await.unwrap()["role"], "viewer");
    let second_path = format!("/entities/users/{}", second["user_id"].as_str().unwrap());
    error_code(
        app.with_key(&inside, Method::DELETE, &second_path)
            .send()
            .await
            .unwrap(),
        409,
    )
    .await;
    let removed = app
        .with_key(&inside, Method::DELETE, &path)
        .send()
        .await
        .unwrap();
    assert_eq!(
        removed.json::<Value>().await.unwrap(),
        json!({"message": "User removed"})
    );
    let viewer_token = first["access_token"].as_str().unwrap();
    error_code(
        app.with_key(viewer_token, Method::GET, "/entities/users")
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    error_code(
        app.api(Method::PATCH, &second_path)
            .json(&json!({"role": "boss"}))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
}

async fn invitations_stay_inside_their_entity(engine: Engine) {
    let (app, _relay) = spawn_app_with_relay(engine, |_| {}).await;
    let invitation = app.invite("pat@example.com", "viewer").await;
    let path = format!(
        "/entities/invitations/{}",
        invitation["id"].as_str().unwrap()
    );
    let second = app.create_entity("Second").await;
    let second_id = second.as_str();
    let other = app.other_account().await;
    let limited = app
        .create_key(json!({"name": "l", "role": "admin", "entity_id": second_id}))
        .await;
    for key in [other.api_key.as_str(), limited.as_str()] {
        for (method, path) in [
            (Method::GET, path.clone()),
            (Method::DELETE, path.clone()),
            (Method::POST, format!("{path}/resend")),
        ] {
            error_code(app.with_key(key, method, &path).send().await.unwrap(), 404).await;
        }
        let listed: Value = app
            .with_key(key, Method::GET, "/entities/invitations")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(listed["data"], json!([]));
    }
    let elsewhere = app
        .api(Method::GET, &path)
        .header("x-entity-id", second_id)
        .send()
        .await
        .unwrap();
    error_code(elsewhere, 404).await;
    let still: Value = app
        .api(Method::GET, &path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(still["status"], "pending", "nothing changed");
    error_code(
        app.api(Method::GET, "/entities/invitations?status=lost")
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
}
