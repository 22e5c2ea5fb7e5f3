//! Users and credentials under attack: accepting as someone else, guessing in parallel,
//! keeping access after removal, and the ways back in (password change, sign-out, reset).

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_engines;
use crate::helpers::{
    Engine, ServerProcess, error_code, fresh_database_url, key_in, spawn_app_with_relay, token_of,
};

both_engines!(
    existing_user_accept_is_no_password_oracle,
    concurrent_wrong_logins_are_counted_before_hashing,
    concurrent_wrong_codes_are_counted_before_comparing,
    concurrent_resends_send_one_email,
    removed_admins_lose_the_keys_they_made,
    an_account_key_may_remove_an_entitys_only_user_admin,
    users_change_their_password_and_sign_out,
    a_forgotten_password_is_reset_by_email,
    user_emails_differing_only_by_case_are_one_user,
    a_flood_of_logins_is_turned_away_and_cannot_slow_authenticated_hashing,
);

/// POSTs to the accept endpoint without credentials, as anyone holding the link can.
async fn accept_anonymously(
    app: &crate::helpers::TestApp,
    token: &str,
    body: Value,
) -> reqwest::Response {
    app.client
        .post(format!("{}/invitations/accept?token={token}", app.address))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn invite_into(app: &crate::helpers::TestApp, entity: &str, email: &str, role: &str) {
    let response = app
        .api(Method::POST, "/entities/invitations")
        .header("x-entity-id", entity)
        .json(&json!({"email": email, "role": role}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

async fn existing_user_accept_is_no_password_oracle(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |_| {}).await;
    let password = "sam's real password";
    let sam = app
        .new_user(&relay, "sam@example.com", "viewer", password, 1)
        .await;
    let second = app.create_entity("Second").await;
    invite_into(&app, &second, "sam@example.com", "admin").await;
    let token = token_of(&relay.invitation_link("sam@example.com", 2).await);
    invite_into(&app, &second, "nobody@example.com", "admin").await;
    let fresh = token_of(&relay.invitation_link("nobody@example.com", 3).await);

    // Without a new user's fields, an email with a user and one without answer alike.
    for token in [&token, &fresh] {
        let answer = error_code(
            accept_anonymously(&app, token, json!({"password": password})).await,
            422,
        )
        .await;
        assert_eq!(answer["param"], "name");
    }
    // With them, a password is never tried: the right one and a wrong one answer alike,
    // as often as anyone asks, and the invitation stays open.
    for guess in [
        "a wrong guess 1234",
        password,
        "another wrong guess",
        password,
    ] {
        let answer = error_code(
            accept_anonymously(&app, &token, json!({"name": "Mallory", "password": guess})).await,
            401,
        )
        .await;
        assert_eq!(answer["code"], "sign_in_required");
    }
    let pending: Value = app
        .api(Method::GET, "/entities/invitations?status=pending")
        .header("x-entity-id", &second)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pending["data"].as_array().unwrap().len(), 2);

    // Signed in as someone else, the invitation is not theirs.
    let other = app
        .new_user(&relay, "other@example.com", "viewer", "other's password", 4)
        .await;
    let foreign = app.accept_signed_in(&token, &other.token).await;
    error_code(foreign, 403).await;
    // An API key is nobody's person.
    let by_key = app
        .api(Method::POST, &format!("/invitations/accept?token={token}"))
        .send()
        .await
        .unwrap();
    error_code(by_key, 403).await;

    // The sign-in form of the page counts against the same limit as /auth/login.
    let form = |password: &str| {
        app.client
            .post(format!("{}/invitations/accept", app.address))
            .form(&[
                ("token", token.as_str()),
                ("email", "sam@example.com"),
                ("password", password),
            ])
            .send()
    };
    for _ in 0..5 {
        let page = form("wrong password here").await.unwrap();
        assert_eq!(page.status(), 401);
        assert!(
            page.text()
                .await
                .unwrap()
                .contains("the email or the password is wrong")
        );
    }
    assert_eq!(form(password).await.unwrap().status(), 429);
    error_code(app.login("sam@example.com", password).await, 429).await;

    // Signed in as Sam, with the token Sam already has, the invitation is accepted.
    let joined = app.accept_signed_in(&token, &sam.token).await;
    assert_eq!(joined.status(), 200);
    let joined: Value = joined.json().await.unwrap();
    assert_eq!(joined["user_id"], sam.id.as_str());
    assert_eq!(joined["entity_id"], second.as_str());
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(users, 2, "Sam and the other user; no impostor");
}

async fn concurrent_wrong_logins_are_counted_before_hashing(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |_| {}).await;
    let password = "lee's own password";
    app.new_user(&relay, "lee@example.com", "viewer", password, 1)
        .await;
    let guesses = (0..60).map(|n| {
        app.client
            .post(format!("{}/auth/login", app.address))
            .json(&json!({"email": "lee@example.com", "password": format!("guess number {n}")}))
    });
    let answers = all_at_once(guesses).await;
    let mut tried = 0;
    for answer in answers {
        match answer.status().as_u16() {
            401 => tried += 1,
            429 | 503 => assert!(answer.headers().contains_key("retry-after")),
            other => panic!("a guess answered {other}"),
        }
    }
    // Guesses refused in the burst used up nothing; one after another, the rest of the
    // five are tried, and then no more.
    loop {
        let answer = app.login("lee@example.com", "one more guess").await;
        if answer.status() == 429 {
            break;
        }
        assert_eq!(answer.status(), 401);
        tried += 1;
    }
    assert_eq!(tried, 5, "five guesses in all were tried");
    error_code(app.login("lee@example.com", password).await, 429).await;
}

/// Sends every request at once and waits for all the answers.
async fn all_at_once(
    requests: impl Iterator<Item = reqwest::RequestBuilder>,
) -> Vec<reqwest::Response> {
    let tasks: Vec<_> = requests.map(|r| tokio::spawn(r.send())).collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap().unwrap());
    }
    answers
}

async fn concurrent_wrong_codes_are_counted_before_comparing(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |_| {}).await;
    app.active_domain("codes.example").await;
    app.add_sender("/v1/email-address", "billing@codes.example")
        .await;
    let (_, code) = relay
        .verification_link_and_code("billing@codes.example", 1)
        .await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let guesses = (0..40).map(|_| {
        app.api(Method::POST, "/v1/email-address/verify")
            .json(&json!({"code": wrong}))
    });
    let mut compared = 0;
    for answer in all_at_once(guesses).await {
        match answer.status().as_u16() {
            422 => compared += 1,
            410 => {}
            other => panic!("a guess answered {other}"),
        }
    }
    assert!(
        compared <= 5,
        "{compared} codes were compared; the limit is 5"
    );
    let answer = app
        .api(Method::POST, "/v1/email-address/verify")
        .json(&json!({"code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(answer, 410).await["code"], "code_void");
}

async fn concurrent_resends_send_one_email(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |_| {}).await;
    app.active_domain("resend.example").await;
    app.add_sender("/v1/email-address", "billing@resend.example")
        .await;
    relay.wait_for(1, Duration::from_secs(20)).await;
    // Past the minute between emails, and well inside the first email's lease.
    app.advance_clock(Duration::from_secs(61)).await;
    let resends = (0..20).map(|_| app.api(Method::POST, "/v1/email-address/resend-verification"));
    let sent = all_at_once(resends)
        .await
        .iter()
        .filter(|answer| answer.status() == 200)
        .count();
    // Requests that see one another may all be refused; never more than one goes out.
    assert!(sent <= 1, "{sent} resends went out in the same minute");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(relay.received().len(), 1 + sent);
}

async fn removed_admins_lose_the_keys_they_made(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |_| {}).await;
    let ada = app
        .new_user(&relay, "ada@example.com", "admin", "ada's own password", 1)
        .await;
    let made = |name: &'static str| {
        app.with_key(&ada.token, Method::POST, "/api-keys")
            .json(&json!({"name": name, "role": "admin"}))
            .send()
    };
    let kept: Value = made("kept").await.unwrap().json().await.unwrap();
    let listed: Value = app.get_json("/api-keys").await;
    let shown = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == kept["id"])
        .unwrap()
        .clone();
    assert_eq!(shown["created_by"], ada.id.as_str());
    assert_eq!(shown["created_by_user_id"], ada.id.as_str());
    let bootstrap = &listed["data"][0];
    assert_eq!(bootstrap["created_by"], "cli");
    let secret = kept["api_key"].as_str().unwrap();
    assert_eq!(
        app.with_key(secret, Method::GET, "/entities/users")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Demoted, then removed: what Ada made stops working at once.
    let demoted = app
        .api(Method::PATCH, &format!("/entities/users/{}", ada.id))
        .json(&json!({"role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(demoted.status(), 200);
    error_code(
        app.with_key(secret, Method::GET, "/entities/users")
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    let ada_again = app
        .api(Method::PATCH, &format!("/entities/users/{}", ada.id))
        .json(&json!({"role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ada_again.status(), 200);
    let second: Value = made("second").await.unwrap().json().await.unwrap();
    // A key made by Ada's key acts for Ada too.
    let made_by_key: Value = app
        .with_key(
            second["api_key"].as_str().unwrap(),
            Method::POST,
            "/api-keys",
        )
        .json(&json!({"name": "made by a key", "role": "admin"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(made_by_key["created_by"], second["id"]);
    assert_eq!(made_by_key["created_by_user_id"], ada.id.as_str());
    let removed = app
        .api(Method::DELETE, &format!("/entities/users/{}", ada.id))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    for key in [
        second["api_key"].as_str().unwrap(),
        made_by_key["api_key"].as_str().unwrap(),
        ada.token.as_str(),
    ] {
        let status = app
            .with_key(key, Method::GET, "/entities/users")
            .send()
            .await
            .unwrap()
            .status();
        assert!(status == 401 || status == 403, "{status}");
    }
    let left: Value = app.get_json("/api-keys").await;
    assert_eq!(left["data"].as_array().unwrap().len(), 1, "{left}");
}

async fn an_account_key_may_remove_an_entitys_only_user_admin(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |_| {}).await;
    let ada = app
        .new_user(&relay, "ada@example.com", "admin", "ada's own password", 1)
        .await;
    let path = format!("/entities/users/{}", ada.id);
    // Inside the entity, its last admin stays...
    let entity_key = app
        .create_key(json!({"name": "e", "role": "admin", "entity_id": app.admin.entity_id}))
        .await;
    for key in [ada.token.as_str(), entity_key.as_str()] {
        let answer = app
            .with_key(key, Method::PATCH, &path)
            .json(&json!({"role": "viewer"}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(answer, 409).await["code"], "last_admin");
        error_code(
            app.with_key(key, Method::DELETE, &path)
                .send()
                .await
                .unwrap(),
            409,
        )
        .await;
    }
    // ...but the account's admin stands above it, and may remove someone who left.
    let removed = app.api(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(removed.status(), 200);
    let members: Value = app.get_json("/entities/users").await;
    assert_eq!(members["data"], json!([]));
}

async fn users_change_their_password_and_sign_out(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |_| {}).await;
    let old = "the old password";
    let new = "the brand new password";
    crate::helpers::record_secret(new);
    let kim = app
        .new_user(&relay, "kim@example.com", "viewer", old, 1)
        .await;
    let elsewhere: Value = app
        .login("kim@example.com", old)
        .await
        .json()
        .await
        .unwrap();
    let elsewhere = elsewhere["access_token"].as_str().unwrap();
    let change = |current: &str, next: &str| {
        app.with_key(&kim.token, Method::POST, "/auth/password")
            .json(&json!({"current_password": current, "new_password": next}))
            .send()
    };
    let wrong = error_code(change("not the password", new).await.unwrap(), 401).await;
    assert_eq!(wrong["param"], "current_password");
    let short = error_code(change(old, "short").await.unwrap(), 422).await;
    assert_eq!(short["param"], "new_password");
    assert_eq!(change(old, new).await.unwrap().status(), 200);
    error_code(app.login("kim@example.com", old).await, 401).await;
    assert_eq!(app.login("kim@example.com", new).await.status(), 200);
    // The session that changed it goes on; every other one ends.
    let members = |token: &str| app.with_key(token, Method::GET, "/entities/users").send();
    assert_eq!(members(&kim.token).await.unwrap().status(), 200);
    error_code(members(elsewhere).await.unwrap(), 401).await;
    // An API key has no password.
    error_code(
        app.api(Method::POST, "/auth/password")
            .json(&json!({"current_password": old, "new_password": new}))
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;

    let out = app
        .with_key(&kim.token, Method::POST, "/auth/logout")
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 200);
    error_code(members(&kim.token).await.unwrap(), 401).await;

    // A stranger's failed logins lock the email's logins, not the signed-in user's change.
    let session: Value = app
        .login("kim@example.com", new)
        .await
        .json()
        .await
        .unwrap();
    let mut guesses = 0;
    while app
        .login("kim@example.com", "a stranger's guess")
        .await
        .status()
        == 401
    {
        guesses += 1;
        assert!(guesses <= 5);
    }
    error_code(app.login("kim@example.com", new).await, 429).await;
    let changed = app
        .with_key(
            session["access_token"].as_str().unwrap(),
            Method::POST,
            "/auth/password",
        )
        .json(&json!({"current_password": new, "new_password": "yet another password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
}

async fn a_forgotten_password_is_reset_by_email(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |_| {}).await;
    let old = "the forgotten password";
    let kim = app
        .new_user(&relay, "kim@example.com", "viewer", old, 1)
        .await;
    let ask = |email: &str| {
        app.client
            .post(format!("{}/auth/password-reset", app.address))
            .json(&json!({"email": email}))
            .send()
    };
    // The same answer whether a user has the email or not.
    let known = ask("KIM@example.com").await.unwrap();
    let unknown = ask("nobody@example.com").await.unwrap();
    assert_eq!(known.status(), 202);
    assert_eq!(unknown.status(), 202);
    assert_eq!(
        known.json::<Value>().await.unwrap(),
        unknown.json::<Value>().await.unwrap()
    );
    let link = relay.reset_link("kim@example.com", 2).await;
    // A second link, asked before the first is used: the password set, it goes too.
    assert_eq!(ask("kim@example.com").await.unwrap().status(), 202);
    let second_link = relay.reset_link("kim@example.com", 3).await;
    assert_ne!(second_link, link);
    let messages: Value = app.get_json("/v2/messages").await;
    assert!(
        !messages.to_string().contains(&token_of(&link)),
        "the reset token is never in the delivery log"
    );
    assert!(
        relay
            .received()
            .iter()
            .all(|m| !m.text().contains("nobody@example.com"))
    );

    // The link opens a page whose form sets the password, once.
    let page = app.client.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("name=\"password\""));
    let new = "a password chosen anew";
    crate::helpers::record_secret(new);
    let set = |password: &str| {
        app.client
            .post(format!("{}/auth/password-reset/confirm", app.address))
            .form(&[
                ("token", token_of(&link)),
                ("password", password.to_string()),
            ])
            .send()
    };
    assert_eq!(set("short").await.unwrap().status(), 422);
    let done = set(new).await.unwrap();
    assert_eq!(done.status(), 200);
    assert!(
        done.text()
            .await
            .unwrap()
            .contains("Your password is changed")
    );
    assert_eq!(set("and yet another one").await.unwrap().status(), 404);
    let second = app
        .client
        .post(format!("{}/auth/password-reset/confirm", app.address))
        .json(&json!({"token": token_of(&second_link), "password": "and yet another one"}))
        .send()
        .await
        .unwrap();
    error_code(second, 404).await;
    error_code(app.login("kim@example.com", old).await, 401).await;
    assert_eq!(app.login("kim@example.com", new).await.status(), 200);
    error_code(
        app.with_key(&kim.token, Method::GET, "/entities/users")
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;

    // Emails to one address are few; asking is limited per client.
    for _ in 0..4 {
        assert_eq!(ask("kim@example.com").await.unwrap().status(), 202);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resets = relay
        .received()
        .iter()
        .filter(|m| m.text().contains("/auth/password-reset/confirm"))
        .count();
    assert_eq!(resets, 3, "three reset emails an hour to one address");
    let mut limited = None;
    for _ in 0..5 {
        let answer = ask("someone@example.com").await.unwrap();
        if answer.status() == 429 {
            limited = Some(answer);
            break;
        }
    }
    let limited = limited.expect("a client asking again and again is slowed down");
    assert!(limited.headers().contains_key("retry-after"));
}

async fn user_emails_differing_only_by_case_are_one_user(engine: Engine) {
    let (app, relay) = spawn_app_with_relay(engine, |_| {}).await;
    let kim = app
        .new_user(
            &relay,
            "Kim.Lee@example.com",
            "viewer",
            "kim's password 1",
            1,
        )
        .await;
    let session = app.login("kim.lee@EXAMPLE.COM", "kim's password 1").await;
    assert_eq!(session.status(), 200);
    assert_eq!(
        session.json::<Value>().await.unwrap()["user_id"],
        kim.id.as_str()
    );

    let second = app.create_entity("Second").await;
    invite_into(&app, &second, "KIM.LEE@example.com", "viewer").await;
    let token = token_of(&relay.invitation_link("KIM.LEE@example.com", 2).await);
    let answer = accept_anonymously(
        &app,
        &token,
        json!({"name": "Kim Again", "password": "a second user's password"}),
    )
    .await;
    assert_eq!(error_code(answer, 401).await["code"], "sign_in_required");
    let joined = app.accept_signed_in(&token, &kim.token).await;
    assert_eq!(joined.status(), 200);
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(users, 1);
}

/// In a server process of its own: the password hashers are per process.
async fn a_flood_of_logins_is_turned_away_and_cannot_slow_authenticated_hashing(engine: Engine) {
    let dir = crate::helpers::test_dir();
    let database = fresh_database_url(engine, &dir).await;
    let server = ServerProcess::serve(&dir, &database);
    let key = key_in(&server.stdout()).unwrap();
    let client = reqwest::Client::new();
    let domain = client
        .post(format!("{}/v2/domains", server.address))
        .bearer_auth(&key)
        .json(&json!({"domain": "flood.example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(domain.status(), 201);
    let activated = std::process::Command::new(env!("CARGO_BIN_EXE_mailroom"))
        .args(["admin", "activate-domain", "flood.example"])
        .current_dir(dir.path())
        .env("MAILROOM_DATABASE_URL", &database)
        .output()
        .unwrap();
    assert!(activated.status.success());

    // Logins for unknown emails, each costing a hash, from thirty clients (loopback has a
    // whole /8 of addresses) so that no client's own limit stops them first.
    let flood: Vec<_> = (0..300u32)
        .map(|n| {
            let client = reqwest::Client::builder()
                .local_address(std::net::IpAddr::from([127, 0, 0, 2 + (n % 30) as u8]))
                .build()
                .unwrap();
            let request = client
                .post(format!("{}/auth/login", server.address))
                .json(&json!({"email": format!("flood{n}@example.com"), "password": "whatever it is"}))
                .send();
            tokio::spawn(request)
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let mailbox = client
        .post(format!("{}/v2/email-accounts/create", server.address))
        .bearer_auth(&key)
        .json(&json!({"domain": "flood.example", "local_part": "kept", "user_id": "u1"}))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    let mut busy = 0;
    for answer in flood {
        let answer = answer.await.unwrap().unwrap();
        match answer.status().as_u16() {
            503 => {
                assert_eq!(answer.headers()["retry-after"], "1");
                busy += 1;
            }
            401 => {}
            other => panic!("a login answered {other}"),
        }
    }
    assert!(
        mailbox.status().is_success(),
        "{}",
        mailbox.text().await.unwrap()
    );
    assert!(
        busy > 0,
        "the anonymous share of the hashers never filled up"
    );
    assert!(
        took < Duration::from_secs(3),
        "a mailbox waited {took:?} behind anonymous logins"
    );
}
