//! Sender addresses (spec 000): verification by link (in a real browser) and by code,
//! limits, domains, scopes and the fallback order.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_engines;
use crate::helpers::browser::Browser;
use crate::helpers::dns::TestDns;
use crate::helpers::smtp::TestSmtp;
use crate::helpers::{Engine, TestApp, error_code, spawn_app_with_relay, token_of};

both_engines!(
    a_link_verifies_only_when_its_page_is_confirmed,
    a_code_verifies_and_wrong_codes_run_out,
    expired_and_reused_secrets_fail_clearly,
    resending_is_limited,
    the_domain_status_follows_dns,
    organizations_fall_back_to_their_account_then_the_system,
);

async fn app(engine: Engine) -> (TestApp, TestSmtp, TestDns) {
    let dns = TestDns::start().await;
    let (app, relay) = spawn_app_with_relay(engine, |s| {
        s.dns_nameservers = vec![dns.address];
        s.mail_from = "noreply@mailroom.example".into();
    })
    .await;
    (app, relay, dns)
}

async fn a_link_verifies_only_when_its_page_is_confirmed(engine: Engine) {
    let (app, relay, _dns) = app(engine).await;
    let created = app
        .add_sender("/v1/email-address", "Billing@Customer.com")
        .await;
    for field in [
        "createdAt",
        "updatedAt",
        "id",
        "email",
        "emailVerificationStatus",
        "domainVerificationStatus",
        "tokens",
        "accountId",
        "organizationId",
        "dnsRecords",
    ] {
        assert!(created.get(field).is_some(), "{field}: {created}");
    }
    assert_eq!(created["email"], "Billing@customer.com");
    assert_eq!(created["emailVerificationStatus"], "pending");
    assert_eq!(created["domainVerificationStatus"], "pending");
    assert_eq!(created["organizationId"], Value::Null);
    assert_eq!(created["accountId"], app.admin.account_id.as_str());
    assert_eq!(created["tokens"].as_array().unwrap().len(), 3);
    let token = created["tokens"][0].as_str().unwrap();
    assert_eq!(
        created["dnsRecords"][0],
        json!({"type": "CNAME", "name": format!("{token}._domainkey.customer.com"), "value": format!("{token}.dkim.mailroom.test")})
    );

    let (link, _code) = relay
        .verification_link_and_code("Billing@customer.com", 1)
        .await;
    assert!(link.starts_with(&app.address), "{link}");
    let email = &relay.received()[0];
    assert_eq!(
        email.from, "noreply@mailroom.example",
        "sent from the system sender"
    );

    // A scanner that follows the link verifies nothing.
    let scanned = reqwest::get(&link).await.unwrap();
    assert_eq!(scanned.status(), 200);
    assert_eq!(scanned.headers()["referrer-policy"], "no-referrer");
    assert!(scanned.text().await.unwrap().contains("<button"));
    assert_eq!(
        app.get_json("/v1/email-address/status").await["emailVerificationStatus"],
        "pending"
    );

    let Some(browser) = Browser::start().await else {
        return;
    };
    browser.open(&link).await;
    assert_eq!(browser.text("#email").await, "Billing@customer.com");
    browser.click("#confirm").await;
    let result = browser.wait_for("#result").await;
    assert!(result.contains("confirmed"), "{result}");
    let status = app.get_json("/v1/email-address/status").await;
    assert_eq!(
        status,
        json!({"emailVerificationStatus": "verified", "domainVerificationStatus": "pending"})
    );

    // The link works once.
    browser.open(&link).await;
    assert!(browser.wait_for("h1").await.contains("not valid"));
}

async fn a_code_verifies_and_wrong_codes_run_out(engine: Engine) {
    let (app, relay, _dns) = app(engine).await;
    app.add_sender("/v1/email-address", "billing@customer.com")
        .await;
    let (_link, code) = relay
        .verification_link_and_code("billing@customer.com", 1)
        .await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let attempt = |code: &str| {
        app.api(Method::POST, "/v1/email-address/verify")
            .json(&json!({"code": code}))
    };

    let first = error_code(attempt(wrong).send().await.unwrap(), 422).await;
    assert_eq!(first["param"], "code");
    assert!(
        first["message"].as_str().unwrap().contains("4 tries left"),
        "{first}"
    );
    let verified = attempt(&code).send().await.unwrap();
    assert_eq!(verified.status(), 200);
    assert_eq!(
        verified.json::<Value>().await.unwrap()["emailVerificationStatus"],
        "verified"
    );
    error_code(attempt(&code).send().await.unwrap(), 409).await;

    // Five wrong codes void the code: even the right one fails after.
    app.add_sender("/v1/email-address", "sales@customer.com")
        .await;
    let (_link, code) = relay
        .verification_link_and_code("sales@customer.com", 2)
        .await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..4 {
        error_code(attempt(wrong).send().await.unwrap(), 422).await;
    }
    let last = error_code(attempt(wrong).send().await.unwrap(), 422).await;
    assert!(
        last["message"].as_str().unwrap().contains("last try"),
        "{last}"
    );
    assert_eq!(
        error_code(attempt(&code).send().await.unwrap(), 410).await["code"],
        "code_void"
    );
}

async fn expired_and_reused_secrets_fail_clearly(engine: Engine) {
    let (app, relay, _dns) = app(engine).await;
    app.add_sender("/v1/email-address", "billing@customer.com")
        .await;
    let (link, code) = relay
        .verification_link_and_code("billing@customer.com", 1)
        .await;
    // A day passes, and a minute: the link and the code have expired.
    app.advance_clock(Duration::from_secs(24 * 3600 + 60)).await;
    assert_eq!(
        app.get_json("/v1/email-address").await["emailVerificationStatus"],
        "expired"
    );
    let page = reqwest::get(&link).await.unwrap();
    assert_eq!(page.status(), 410);
    assert!(page.text().await.unwrap().contains("expired"));
    let by_code = app
        .api(Method::POST, "/v1/email-address/verify")
        .json(&json!({"code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(by_code, 410).await["code"], "code_expired");

    let token = token_of(&link);
    let confirm = |token: &str| {
        reqwest::Client::new()
            .post(format!("{}/v1/email-address/verify/confirm", app.address))
            .form(&[("token", token)])
    };
    assert_eq!(confirm(&token).send().await.unwrap().status(), 410);
    let unknown = confirm("ev_0000").send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert!(
        unknown.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );

    // A fresh link works once; the second use is refused.
    app.api(Method::POST, "/v1/email-address/resend-verification")
        .send()
        .await
        .unwrap();
    let (link, _) = relay
        .verification_link_and_code("billing@customer.com", 2)
        .await;
    let token = token_of(&link);
    assert_eq!(confirm(&token).send().await.unwrap().status(), 200);
    assert_eq!(confirm(&token).send().await.unwrap().status(), 404);
    let stored: Vec<Option<String>> = sqlx::query_scalar("SELECT token_hash FROM sender_addresses")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(stored, vec![None], "spent secrets are gone");
}

async fn resending_is_limited(engine: Engine) {
    let (app, relay, _dns) = app(engine).await;
    app.add_sender("/v1/email-address", "billing@customer.com")
        .await;
    let (first_link, _) = relay
        .verification_link_and_code("billing@customer.com", 1)
        .await;
    let resend = || app.api(Method::POST, "/v1/email-address/resend-verification");

    let too_soon = resend().send().await.unwrap();
    assert!(
        too_soon.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            <= 60
    );
    error_code(too_soon, 429).await;

    app.advance_clock(Duration::from_secs(61)).await;
    let resent = resend().send().await.unwrap();
    assert_eq!(resent.status(), 200);
    assert_eq!(
        resent.json::<Value>().await.unwrap(),
        json!({"success": true})
    );
    let (second_link, _) = relay
        .verification_link_and_code("billing@customer.com", 2)
        .await;
    assert_ne!(first_link, second_link);
    assert_eq!(
        reqwest::get(&first_link).await.unwrap().status(),
        404,
        "the old link stops working"
    );
    assert_eq!(reqwest::get(&second_link).await.unwrap().status(), 200);

    // Ten a day: eight more were sent earlier today, and the last over a minute ago.
    let earlier = app.db.now().0;
    for _ in 0..8 {
        sqlx::query(
            "INSERT INTO verification_sends (account_id, email, at) \
             VALUES ($1, 'billing@customer.com', $2)",
        )
        .bind(&app.admin.account_id)
        .bind(earlier)
        .execute(&app.db.pool)
        .await
        .unwrap();
    }
    app.advance_clock(Duration::from_secs(61)).await;
    let capped = resend().send().await.unwrap();
    assert!(
        error_code(capped, 429).await["message"]
            .as_str()
            .unwrap()
            .contains("ten")
    );

    sqlx::query("UPDATE sender_addresses SET verified_at = 1")
        .execute(&app.db.pool)
        .await
        .unwrap();
    error_code(resend().send().await.unwrap(), 409).await;
}

async fn the_domain_status_follows_dns(engine: Engine) {
    let (app, _relay, dns) = app(engine).await;
    let created = app
        .add_sender("/v1/email-address", "billing@customer.com")
        .await;
    for record in created["dnsRecords"].as_array().unwrap() {
        dns.cname(
            record["name"].as_str().unwrap(),
            record["value"].as_str().unwrap(),
        );
    }
    assert_eq!(app.verify_domain("customer.com").await["status"], "active");
    assert_eq!(
        app.get_json("/v1/email-address/status").await["domainVerificationStatus"],
        "verified"
    );
    let in_use = app
        .api(Method::DELETE, "/v2/domains/customer.com")
        .send()
        .await
        .unwrap();
    error_code(in_use, 409).await;
}

async fn organizations_fall_back_to_their_account_then_the_system(engine: Engine) {
    let (app, relay, dns) = app(engine).await;
    let org = app.admin.entity_id.clone();
    let org_path = format!("/v1/organizations/{org}/email-address");
    let created = app.add_sender(&org_path, "team@customer.com").await;
    assert_eq!(created["organizationId"], org.as_str());
    assert_eq!(created["effective"], false);
    assert_eq!(created["effectiveSender"], "noreply@mailroom.example");

    app.add_sender("/v1/email-address", "office@customer.com")
        .await;
    for record in created["dnsRecords"].as_array().unwrap() {
        dns.cname(
            record["name"].as_str().unwrap(),
            record["value"].as_str().unwrap(),
        );
    }
    app.verify_domain("customer.com").await;
    let (_, account_code) = relay
        .verification_link_and_code("office@customer.com", 2)
        .await;
    app.api(Method::POST, "/v1/email-address/verify")
        .json(&json!({"code": account_code}))
        .send()
        .await
        .unwrap();
    let org_sender = app.get_json(&org_path).await;
    assert_eq!(org_sender["effective"], false);
    assert_eq!(
        org_sender["effectiveSender"], "office@customer.com",
        "the account's verified address"
    );

    let (_, org_code) = relay
        .verification_link_and_code("team@customer.com", 2)
        .await;
    let verified = app
        .api(Method::POST, &format!("{org_path}/verify"))
        .json(&json!({"code": org_code}))
        .send()
        .await
        .unwrap();
    assert_eq!(verified.status(), 200);
    let org_sender = app.get_json(&org_path).await;
    assert_eq!(org_sender["effective"], true);
    assert_eq!(org_sender["effectiveSender"], "team@customer.com");
    assert_eq!(
        app.get_json(&format!("{org_path}/status")).await,
        json!({"emailVerificationStatus": "verified", "domainVerificationStatus": "verified"})
    );

    // Replacing keeps one per scope; deleting answers the count.
    let replaced = app.add_sender(&org_path, "crew@customer.com").await;
    assert_eq!(replaced["email"], "crew@customer.com");
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sender_addresses")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(count, 2);
    let deleted: Value = app
        .api(Method::DELETE, &org_path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deleted, json!({"count": 1}));
    let again: Value = app
        .api(Method::DELETE, &org_path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again, json!({"count": 0}));
    error_code(app.api(Method::GET, &org_path).send().await.unwrap(), 404).await;

    // Walls: another account's key, and a key limited to another entity.
    let other = app.other_account().await;
    for (method, path) in [
        (Method::GET, org_path.clone()),
        (Method::POST, org_path.clone()),
        (Method::DELETE, org_path.clone()),
        (Method::GET, format!("{org_path}/status")),
    ] {
        let response = app
            .with_key(&other.api_key, method, &path)
            .json(&json!({"email": "x@customer.com"}))
            .send()
            .await
            .unwrap();
        error_code(response, 404).await;
    }
    let second = app.create_entity("Second").await;
    let limited = app
        .create_key(json!({"name": "l", "role": "admin", "entity_id": second}))
        .await;
    error_code(
        app.with_key(&limited, Method::GET, &format!("{org_path}/status"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    let other_own = app
        .with_key(&other.api_key, Method::GET, "/v1/email-address")
        .send()
        .await
        .unwrap();
    error_code(other_own, 404).await;

    let bad = app
        .api(Method::POST, "/v1/email-address")
        .json(&json!({"email": "not an address"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(bad, 422).await["param"], "email");
    let viewer = app.create_key(json!({"name": "v", "role": "viewer"})).await;
    error_code(
        app.with_key(&viewer, Method::POST, "/v1/email-address")
            .json(&json!({"email": "a@customer.com"}))
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
}
