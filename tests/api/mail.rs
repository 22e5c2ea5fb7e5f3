//! The outbox, its delivery through relays, and the SMTP settings API (spec 002).

use std::time::{Duration, Instant};

use base64::Engine as _;
use mailroom::domains::model::DomainStatus;
use mailroom::domains::store::set_status_by_operator;
use mailroom::mail::outbox::{Outgoing, enqueue};
use mailroom::mail::templates::{Kind, render};
use mailroom::store::crypto::MasterKey;
use mailroom::types::{DomainName, EmailAddress};
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_engines;
use crate::helpers::dns::TestDns;
use crate::helpers::smtp::{Encryption, TestSmtp};
use crate::helpers::{Engine, ServerProcess, TestApp, error_code, free_port, spawn_app_with_relay};

both_engines!(
    the_settings_api_works_as_documented,
    each_domain_leaves_through_its_own_relay,
    implicit_tls_and_certificate_checks_are_honoured,
    temporary_failures_retry_and_permanent_ones_stop,
    a_relay_that_is_down_gets_the_message_once_up,
    two_instances_deliver_each_message_once,
    signed_mail_verifies_through_the_dns_chain,
    the_settings_test_reports_each_step,
    a_relay_that_cannot_be_used_says_why,
);

both_engines!(a_killed_worker_loses_nothing_and_no_password_leaks);

async fn a_killed_worker_loses_nothing_and_no_password_leaks(engine: Engine) {
    let dir = crate::helpers::test_dir();
    let database = crate::helpers::fresh_database_url(engine, &dir).await;
    let password = "hunter2-relay-secret";
    crate::helpers::record_secret(password);
    let relay = TestSmtp::start(Encryption::StartTls, Some(("relay-user", password))).await;
    relay.stall(true);
    let secret_key = "ab".repeat(32);
    let env = [
        ("MAILROOM_SECRET_KEY", secret_key.as_str()),
        ("MAILROOM_SMTP_TIMEOUT", "3"),
        ("MAILROOM_SMTP_CONNECT_TIMEOUT", "2"),
        ("MAILROOM_MAIL_RETRY_SECONDS", "1"),
        ("MAILROOM_LOG", "debug"),
        ("MAILROOM_DESTINATION_ALLOW", "127.0.0.0/8"),
    ];
    let mut first = ServerProcess::serve_with(&dir, &database, &env);
    let key = crate::helpers::key_in(&first.stdout()).unwrap();
    let client = reqwest::Client::new();
    let mut settings = settings_body(relay.port, false, false, Some(("relay-user", password)));
    settings["options"]["debug"] = json!(true);
    let created = client
        .post(format!(
            "{}/api/v2/email/settings?domain=customer.com",
            first.address
        ))
        .bearer_auth(&key)
        .json(&settings)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    let entities: Value = client
        .get(format!("{}/entities", first.address))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let account_id = entities["data"][0]["account_id"]
        .as_str()
        .unwrap()
        .to_string();

    let db = mailroom::store::Db::connect(&database).await.unwrap();
    // A domain's relay carries its mail once the domain is active in the account.
    set_status_by_operator(
        &db,
        &mailroom::config::Settings::default(),
        &DomainName::parse("customer.com").unwrap(),
        None,
        DomainStatus::Active,
    )
    .await
    .unwrap();
    let master_key = MasterKey::from_hex(&secret_key).unwrap();
    let mut conn = db.begin().await.unwrap();
    let (from, to) = (
        EmailAddress::parse("billing@customer.com").unwrap(),
        EmailAddress::parse("client@example.org").unwrap(),
    );
    let id = enqueue(
        &mut conn,
        &master_key,
        Outgoing::rendered(
            Some(&account_id),
            &from,
            &to,
            render(
                Kind::Test,
                &[
                    ("from", "billing@customer.com"),
                    ("to", "client@example.org"),
                    ("sent_at", "now"),
                ],
                &[],
            )
            .unwrap(),
        ),
        db.now(),
    )
    .await
    .unwrap()
    .id;
    conn.commit().await.unwrap();

    // The process dies in the middle of the SMTP conversation, the message unsent.
    let deadline = Instant::now() + Duration::from_secs(20);
    while relay.data_started() == 0 {
        assert!(Instant::now() < deadline, "the delivery never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill_hard();
    relay.stall(false);

    let _second = ServerProcess::serve_with(&dir, &database, &env);
    let received = relay.wait_for(1, Duration::from_secs(30)).await;
    let message_id: String = sqlx::query_scalar("SELECT message_id FROM emails WHERE id = $1")
        .bind(&id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(received[0].header("Message-ID").unwrap(), message_id);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status: String = sqlx::query_scalar("SELECT status FROM emails WHERE id = $1")
            .bind(&id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if status == "sent" {
            break;
        }
        assert!(Instant::now() < deadline, "still {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(relay.received().len(), 1);

    // Neither the logs (with the SMTP dialogue on) nor the database hold the password.
    let plain_auth =
        base64::engine::general_purpose::STANDARD.encode(format!("\0relay-user\0{password}"));
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(log.contains("smtp dialogue"), "the dialogue is logged");
    let mut stored = vec![log];
    if engine == Engine::Sqlite {
        for file in ["mailroom.db", "mailroom.db-wal"] {
            stored.push(
                String::from_utf8_lossy(&std::fs::read(dir.path().join(file)).unwrap_or_default())
                    .into_owned(),
            );
        }
    }
    for text in stored {
        assert!(
            !text.contains(password) && !text.contains(&plain_auth),
            "a password in clear"
        );
        assert!(!text.contains(&key[4..]), "an API key in clear");
    }
}

/// An app whose system relay is a plain SMTP server of the test's, retrying after a second.
async fn app_with_system_relay(engine: Engine) -> (TestApp, TestSmtp) {
    spawn_app_with_relay(engine, |s| {
        s.mail_retry_seconds = 1;
        s.smtp_timeout = 5;
    })
    .await
}

fn settings_body(
    port: u16,
    secure: bool,
    reject_unauthorized: bool,
    auth: Option<(&str, &str)>,
) -> Value {
    let (user, pass) = auth.unwrap_or(("", ""));
    crate::helpers::record_secret(pass);
    json!({
        "provider": "smtp",
        "description": "Customer relay",
        "from": "",
        "options": {
            "host": "127.0.0.1", "port": port, "secure": secure, "debug": false,
            "tls": {"rejectUnauthorized": reject_unauthorized},
            "auth": {"user": user, "pass": pass}
        }
    })
}

async fn the_settings_api_works_as_documented(engine: Engine) {
    let (app, _system) = app_with_system_relay(engine).await;
    let url = format!("{}/api/v2/email/settings?domain=customer.com", app.address);
    let key_id: Value = app
        .api(Method::GET, "/api-keys")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key_id = key_id["data"][0]["id"].as_str().unwrap().to_string();

    // The document's own request, with its X-Key and X-Access-Token headers.
    let document_body = json!({
        "provider": "smtp", "description": "My Setting", "from": "",
        "options": {"host": "smtp.customer.com", "port": 465, "secure": true, "debug": false,
                    "tls": {"rejectUnauthorized": false}, "auth": {"user": "postmaster", "pass": "itte574dsts485"}}
    });
    let created = app
        .client
        .post(&url)
        .header("X-Access-Token", &app.admin.api_key)
        .header("X-Key", &key_id)
        .json(&document_body)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    let created: Value = created.json().await.unwrap();
    let id = created["_id"].as_str().unwrap();
    assert!(
        id.len() == 24 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(created["provider"], "smtp");
    assert_eq!(created["domain"], "customer.com");
    assert_eq!(created["options"]["host"], "smtp.customer.com");
    assert_eq!(created["options"]["tls"]["rejectUnauthorized"], false);
    assert_eq!(
        created["options"]["auth"],
        json!({"user": "postmaster", "pass": "********"})
    );

    // The domain, new to the account, is now registered as pending.
    let domain: Value = app
        .api(Method::GET, "/v2/domains/customer.com")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(domain["domain"]["status"], "pending");

    let fetched: Value = app
        .api(Method::GET, "/api/v2/email/settings?domain=customer.com")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, created);
    let again = app
        .api(Method::POST, "/api/v2/email/settings?domain=customer.com")
        .json(&document_body)
        .send()
        .await
        .unwrap();
    error_code(again, 409).await;

    // PUT what GET answered: the masked password keeps the stored one.
    let stored: String = sqlx::query_scalar("SELECT auth_pass FROM smtp_settings")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    let mut changed = fetched.clone();
    changed["description"] = json!("My updated setting");
    let updated = app
        .api(Method::PUT, "/api/v2/email/settings?domain=customer.com")
        .json(&changed)
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    let updated: Value = updated.json().await.unwrap();
    assert_eq!(updated["description"], "My updated setting");
    assert_eq!(updated["options"]["auth"]["pass"], "********");
    let kept: String = sqlx::query_scalar("SELECT auth_pass FROM smtp_settings")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(kept, stored);
    assert!(!kept.contains("itte574dsts485"), "sealed at rest");
    if engine == Engine::Sqlite {
        let file = std::fs::read(app.dir.path().join("mailroom.db")).unwrap();
        let wal = std::fs::read(app.dir.path().join("mailroom.db-wal")).unwrap_or_default();
        for bytes in [file, wal] {
            assert!(!String::from_utf8_lossy(&bytes).contains("itte574dsts485"));
        }
    }

    // Bad input: each field says what is wrong.
    for (body, param) in [
        (
            json!({"provider": "sendgrid", "options": {"host": "x.com", "port": 25}}),
            "provider",
        ),
        (
            json!({"provider": "smtp", "options": {"host": "x.com", "port": 0}}),
            "options.port",
        ),
        (
            json!({"provider": "smtp", "options": {"host": "x.com", "port": 70000}}),
            "options.port",
        ),
        (
            json!({"provider": "smtp", "options": {"host": "not a host", "port": 25}}),
            "options.host",
        ),
        (
            json!({"provider": "smtp", "from": "me@elsewhere.org", "options": {"host": "x.com", "port": 25}}),
            "from",
        ),
        (json!({"provider": "smtp"}), "options"),
    ] {
        let response = app
            .api(Method::PUT, "/api/v2/email/settings?domain=customer.com")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(response, 422).await["param"], param, "{body}");
    }
    let no_domain = app
        .api(Method::GET, "/api/v2/email/settings")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(no_domain, 400).await["code"],
        "missing_parameter"
    );
    let bad_domain = app
        .api(Method::GET, "/api/v2/email/settings?domain=nodot")
        .send()
        .await
        .unwrap();
    error_code(bad_domain, 422).await;

    // Admins only; another account sees nothing; the domain cannot go while settings use it.
    let editor = app.create_key(json!({"name": "e", "role": "editor"})).await;
    error_code(
        app.with_key(
            &editor,
            Method::GET,
            "/api/v2/email/settings?domain=customer.com",
        )
        .send()
        .await
        .unwrap(),
        403,
    )
    .await;
    let other = app.other_account().await;
    error_code(
        app.with_key(
            &other.api_key,
            Method::GET,
            "/api/v2/email/settings?domain=customer.com",
        )
        .send()
        .await
        .unwrap(),
        404,
    )
    .await;
    error_code(
        app.with_key(
            &other.api_key,
            Method::DELETE,
            "/api/v2/email/settings?domain=customer.com",
        )
        .send()
        .await
        .unwrap(),
        404,
    )
    .await;
    let in_use = app
        .api(Method::DELETE, "/v2/domains/customer.com")
        .send()
        .await
        .unwrap();
    let in_use = error_code(in_use, 409).await;
    assert!(
        in_use["message"]
            .as_str()
            .unwrap()
            .contains("SMTP settings")
    );

    let deleted = app
        .api(Method::DELETE, "/api/v2/email/settings?domain=customer.com")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(
        deleted.json::<Value>().await.unwrap(),
        json!({"status": "OK", "Info": "Removed 1 record."})
    );
    error_code(
        app.api(Method::GET, "/api/v2/email/settings?domain=customer.com")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    error_code(
        app.api(Method::PUT, "/api/v2/email/settings?domain=customer.com")
            .json(&document_body)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    error_code(
        app.api(Method::DELETE, "/api/v2/email/settings?domain=customer.com")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_eq!(
        app.api(Method::DELETE, "/v2/domains/customer.com")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

async fn each_domain_leaves_through_its_own_relay(engine: Engine) {
    let (app, system) = app_with_system_relay(engine).await;
    let relay = TestSmtp::start(Encryption::StartTls, Some(("relay-user", "relay-secret"))).await;
    app.active_domain("customer.com").await;
    app.set_relay(
        "customer.com",
        settings_body(
            relay.port,
            false,
            false,
            Some(("relay-user", "relay-secret")),
        ),
    )
    .await;

    let own = app
        .queue("billing@customer.com", "client@example.org")
        .await;
    let other = app.queue("news@other.org", "client@example.org").await;
    let own = app
        .wait_for_status(&own, "sent", Duration::from_secs(20))
        .await;
    app.wait_for_status(&other, "sent", Duration::from_secs(20))
        .await;

    let through_relay = relay.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(through_relay.len(), 1);
    assert_eq!(through_relay[0].from, "billing@customer.com");
    assert_eq!(through_relay[0].to, vec!["client@example.org"]);
    assert_eq!(through_relay[0].user.as_deref(), Some("relay-user"));
    assert!(through_relay[0].tls, "STARTTLS was used");
    assert_eq!(
        through_relay[0].header("Message-ID").unwrap(),
        own["message_id"].as_str().unwrap()
    );
    assert!(through_relay[0].header("Date").is_some());

    let through_system = system.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(through_system.len(), 1);
    assert_eq!(through_system[0].from, "news@other.org");
    assert_ne!(
        through_system[0].header("Message-ID"),
        through_relay[0].header("Message-ID")
    );

    let log: Value = app
        .api(Method::GET, "/v2/messages?status=sent")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(log["items"].as_array().unwrap().len(), 2);
    assert_eq!(own["attempts"], 1);
    assert!(
        own.get("body").is_none() && !own.to_string().contains("reaches"),
        "no bodies in the log"
    );
    let other_account = app.other_account().await;
    error_code(
        app.with_key(
            &other_account.api_key,
            Method::GET,
            &format!("/v2/messages/{}", own["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap(),
        404,
    )
    .await;
}

async fn implicit_tls_and_certificate_checks_are_honoured(engine: Engine) {
    let (app, _system) = app_with_system_relay(engine).await;
    let relay = TestSmtp::start(Encryption::Implicit, None).await;
    app.active_domain("customer.com").await;
    app.set_relay("customer.com", settings_body(relay.port, true, false, None))
        .await;
    let accepted = app.queue("a@customer.com", "b@example.org").await;
    app.wait_for_status(&accepted, "sent", Duration::from_secs(20))
        .await;
    assert!(relay.wait_for(1, Duration::from_secs(5)).await[0].tls);

    // With rejectUnauthorized the self-signed certificate is refused.
    let strict = settings_body(relay.port, true, true, None);
    app.api(Method::PUT, "/api/v2/email/settings?domain=customer.com")
        .json(&strict)
        .send()
        .await
        .unwrap();
    let refused = app.queue("a@customer.com", "b@example.org").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let current = app.message(&refused).await;
        if current["last_error"].is_string() {
            break current;
        }
        assert!(Instant::now() < deadline, "{current}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(failed["status"], "sent");
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("certificate"),
        "{failed}"
    );
    assert_eq!(
        relay.received().len(),
        1,
        "nothing went through the untrusted connection"
    );
}

async fn temporary_failures_retry_and_permanent_ones_stop(engine: Engine) {
    let (app, system) = app_with_system_relay(engine).await;
    system.reply_next("451 4.3.0 Mailbox busy, try later");
    let retried = app.queue("a@other.org", "b@example.org").await;
    let sent = app
        .wait_for_status(&retried, "sent", Duration::from_secs(30))
        .await;
    assert_eq!(sent["attempts"], 2);
    let attempts: Vec<(String, String)> = sqlx::query_as(
        "SELECT type, detail FROM events WHERE email_id = $1 AND type <> 'email.queued' ORDER BY position",
    )
    .bind(&retried)
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].0, "email.deferred");
    assert!(attempts[0].1.contains("451"), "{attempts:?}");
    assert_eq!(attempts[1].0, "email.sent");

    system.reply_next("550 5.1.1 No such user here");
    let refused = app.queue("a@other.org", "nobody@example.org").await;
    let failed = app
        .wait_for_status(&refused, "failed", Duration::from_secs(20))
        .await;
    assert_eq!(failed["attempts"], 1, "a 5xx is final");
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("No such user"),
        "{failed}"
    );
    let listed: Value = app
        .api(Method::GET, "/v2/messages?status=failed")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
}

async fn a_relay_that_is_down_gets_the_message_once_up(engine: Engine) {
    let (app, _system) = app_with_system_relay(engine).await;
    let port = free_port();
    app.active_domain("customer.com").await;
    app.set_relay("customer.com", settings_body(port, false, false, None))
        .await;
    let id = app.queue("a@customer.com", "b@example.org").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let current = app.message(&id).await;
        if current["attempts"].as_i64() >= Some(1) && current["status"] == "queued" {
            assert!(
                current["last_error"].as_str().unwrap().contains("connect"),
                "{current}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{current}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let relay = TestSmtp::start_on(port, Encryption::Plain, None).await;
    app.wait_for_status(&id, "sent", Duration::from_secs(30))
        .await;
    assert_eq!(relay.received().len(), 1);
}

async fn two_instances_deliver_each_message_once(engine: Engine) {
    let (app, system) = app_with_system_relay(engine).await;
    app.another_instance().await;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(
            app.queue("a@other.org", &format!("user{i}@example.org"))
                .await,
        );
    }
    let received = system.wait_for(40, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = system.received().len().max(received.len());
    assert_eq!(received, 40, "each message exactly once");
    let mut message_ids: Vec<String> = system
        .received()
        .iter()
        .map(|r| r.header("Message-ID").unwrap())
        .collect();
    message_ids.sort();
    message_ids.dedup();
    assert_eq!(message_ids.len(), 40);
    let sent: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM emails WHERE status = 'sent' AND attempts = 1")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(sent, 40);
}

async fn signed_mail_verifies_through_the_dns_chain(engine: Engine) {
    let dns = TestDns::start().await;
    let (app, system) = spawn_app_with_relay(engine, |s| {
        s.dns_nameservers = vec![dns.address];
        s.dns_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    dns.delegate("dkim.mailroom.test", app.dns_address.unwrap());
    let domain = app.add_domain("customer.com").await;
    dns.publish(&domain);
    assert_eq!(app.verify_domain("customer.com").await["status"], "active");

    app.queue("billing@customer.com", "client@example.org")
        .await;
    app.queue("news@unmanaged.org", "client@example.org").await;
    let received = system.wait_for(2, Duration::from_secs(20)).await;
    let signed = received
        .iter()
        .find(|r| r.from == "billing@customer.com")
        .unwrap();
    let unsigned = received
        .iter()
        .find(|r| r.from == "news@unmanaged.org")
        .unwrap();
    let signature = signed.header("DKIM-Signature").expect("signed");
    let first_token = domain["records"][0]["name"]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_string();
    assert!(
        signature.contains("d=customer.com") && signature.contains(&format!("s={first_token}")),
        "{signature}"
    );
    assert!(
        signature.contains("c=relaxed/relaxed") && signature.contains("a=rsa-sha256"),
        "{signature}"
    );
    assert!(unsigned.header("DKIM-Signature").is_none());

    // An independent DKIM verifier, asking the customer's DNS, which points into mailroom's.
    let connections = [
        hickory_resolver::config::ConnectionConfig::udp(),
        hickory_resolver::config::ConnectionConfig::tcp(),
    ]
    .into_iter()
    .map(|mut connection| {
        connection.port = dns.address.port();
        connection
    })
    .collect();
    let config = hickory_resolver::config::ResolverConfig::from_name_servers(vec![
        hickory_resolver::config::NameServerConfig::new(dns.address.ip(), true, connections),
    ]);
    let mut options = hickory_resolver::config::ResolverOpts::default();
    options.edns0 = true;
    let verifier = mail_auth::MessageAuthenticator::new(config, options).unwrap();
    let message = mail_auth::AuthenticatedMessage::parse(signed.data.as_bytes()).unwrap();
    let results = verifier.verify_dkim(&message).await;
    // RSA and Ed25519, each on its own selector.
    assert_eq!(results.len(), 2);
    for result in &results {
        assert_eq!(result.result(), &mail_auth::DkimResult::Pass, "{result:?}");
    }
    use mail_auth::common::verify::VerifySignature;
    let algorithms: Vec<_> = results
        .iter()
        .map(|r| r.signature().unwrap().algorithm())
        .collect();
    assert_eq!(
        algorithms,
        [
            mail_auth::common::crypto::Algorithm::RsaSha256,
            mail_auth::common::crypto::Algorithm::Ed25519Sha256
        ]
    );

    // Tampering breaks it.
    let tampered = signed.data.replace("reaches", "REACHES");
    let tampered = mail_auth::AuthenticatedMessage::parse(tampered.as_bytes()).unwrap();
    let results = verifier.verify_dkim(&tampered).await;
    assert_eq!(results.len(), 2);
    for result in &results {
        assert_ne!(result.result(), &mail_auth::DkimResult::Pass);
    }
}

async fn the_settings_test_reports_each_step(engine: Engine) {
    let (app, _system) = app_with_system_relay(engine).await;
    let relay = TestSmtp::start(Encryption::StartTls, Some(("user", "right-password"))).await;
    app.set_relay(
        "customer.com",
        settings_body(relay.port, false, false, Some(("user", "right-password"))),
    )
    .await;
    let report: Value = app
        .api(
            Method::POST,
            "/api/v2/email/settings/test?domain=customer.com",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["ok"], true, "{report}");
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, vec!["connect", "ehlo", "tls", "auth"]);

    let mut wrong = settings_body(relay.port, false, false, Some(("user", "wrong-password")));
    wrong["options"]["auth"]["pass"] = json!("wrong-password");
    app.api(Method::PUT, "/api/v2/email/settings?domain=customer.com")
        .json(&wrong)
        .send()
        .await
        .unwrap();
    let report: Value = app
        .api(
            Method::POST,
            "/api/v2/email/settings/test?domain=customer.com",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["ok"], false);
    let last = report["steps"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["step"], "auth");
    assert!(
        last["detail"].as_str().unwrap().contains("535"),
        "the server's own words: {last}"
    );

    let down = free_port();
    app.api(Method::PUT, "/api/v2/email/settings?domain=customer.com")
        .json(&settings_body(down, false, false, None))
        .send()
        .await
        .unwrap();
    let report: Value = app
        .api(
            Method::POST,
            "/api/v2/email/settings/test?domain=customer.com",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["steps"][0]["step"], "connect");
    assert_eq!(report["steps"][0]["ok"], false);
    error_code(
        app.api(
            Method::POST,
            "/api/v2/email/settings/test?domain=nothing.org",
        )
        .send()
        .await
        .unwrap(),
        404,
    )
    .await;
}

async fn a_relay_that_cannot_be_used_says_why(engine: Engine) {
    let (app, system) = app_with_system_relay(engine).await;
    app.active_domain("customer.com").await;
    let stored = app
        .set_relay(
            "customer.com",
            settings_body(
                system.port,
                false,
                true,
                Some(("relay-user", "relay-password-1")),
            ),
        )
        .await;
    // The master key changed since the password was stored: it no longer opens.
    let other_key = MasterKey::from_hex(&"77".repeat(32)).unwrap();
    let id = stored["_id"].as_str().unwrap();
    sqlx::query("UPDATE smtp_settings SET auth_pass = $1 WHERE id = $2")
        .bind(other_key.seal(b"relay-password-1", &format!("smtp:{id}")))
        .bind(id)
        .execute(&app.db.pool)
        .await
        .unwrap();

    let queued = app
        .queue("billing@customer.com", "client@example.org")
        .await;
    let attempted = app
        .wait_for_message(&queued, Duration::from_secs(20), |message| {
            message["attempts"].as_i64() >= Some(1) && message["status"] == "queued"
        })
        .await;
    let error = attempted["last_error"].as_str().unwrap();
    assert!(
        error.contains("cannot open the stored SMTP password of customer.com")
            && error.contains("wrong master key"),
        "the cause, not a generic error: {error}"
    );
    assert!(
        system.received().is_empty(),
        "the domain's mail never falls back to the system relay"
    );
}
