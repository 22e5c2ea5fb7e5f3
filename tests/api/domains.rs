use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_engines;
use crate::helpers::dns::TestDns;
use crate::helpers::domains::required;
use crate::helpers::{Engine, TestApp, error_code, spawn_app, spawn_app_with};

both_engines!(
    a_new_domain_is_pending_with_the_records_to_publish,
    what_dns_holds_is_shown_record_by_record,
    correct_records_activate_a_domain_on_verify,
    the_background_verifier_activates_a_domain,
    two_instances_never_check_one_domain_twice,
    a_lost_proof_demotes_only_after_the_grace,
    a_failed_lookup_changes_nothing,
    a_pending_domain_fails_after_72_hours,
    names_are_checked_and_normalised,
    a_domain_belongs_to_one_account,
    domains_are_listed_in_pages,
    deleting_a_domain_removes_its_keys,
);

async fn app_with_dns(engine: Engine) -> (TestApp, TestDns) {
    let dns = TestDns::start().await;
    let app = spawn_app_with(engine, |s| {
        s.dns_nameservers = vec![dns.address];
        s.spf_ips = vec!["192.0.2.0/24".to_string()];
    })
    .await;
    (app, dns)
}

async fn a_new_domain_is_pending_with_the_records_to_publish(engine: Engine) {
    let (app, _dns) = app_with_dns(engine).await;
    let domain = app.add_domain("Customer.com").await;
    assert_eq!(domain["domain"], "customer.com");
    assert_eq!(domain["status"], "pending");
    assert!(domain["verified_at"].is_null() && domain["last_checked_at"].is_null());

    let cnames = required(&domain);
    assert_eq!(cnames.len(), 3);
    for record in &cnames {
        assert_eq!(record["type"], "CNAME");
        let name = record["name"].as_str().unwrap();
        let token = name.strip_suffix("._domainkey.customer.com").expect(name);
        assert_eq!(token.len(), 32);
        assert_eq!(record["value"], format!("{token}.dkim.mailroom.test"));
        assert_eq!(record["status"], "not_checked");
    }
    let advisory: Vec<&Value> = domain["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["required"] == false)
        .collect();
    assert!(
        advisory
            .iter()
            .any(|r| r["type"] == "TXT"
                && r["value"].as_str().unwrap().starts_with("v=spf1 include:"))
    );
    assert!(advisory.iter().any(|r| r["name"] == "_dmarc.customer.com"));

    let checked = app.verify_domain("customer.com").await;
    assert_eq!(checked["status"], "pending");
    assert!(checked["last_checked_at"].is_string());
    for record in required(&checked) {
        assert_eq!(record["status"], "not_found");
        assert_eq!(record["found"], json!([]));
    }
}

async fn what_dns_holds_is_shown_record_by_record(engine: Engine) {
    let (app, dns) = app_with_dns(engine).await;
    let domain = app.add_domain("customer.com").await;
    let cnames = required(&domain);
    let (first, second, third) = (&cnames[0], &cnames[1], &cnames[2]);
    dns.cname(first["name"].as_str().unwrap(), "somewhere.else.example");
    // A provider that appends the zone to the name, and one that appends it to the target.
    dns.cname(
        &format!("{}.customer.com", second["name"].as_str().unwrap()),
        second["value"].as_str().unwrap(),
    );
    dns.cname(
        third["name"].as_str().unwrap(),
        &format!("{}.customer.com", third["value"].as_str().unwrap()),
    );

    let checked = app.verify_domain("customer.com").await;
    assert_eq!(checked["status"], "pending");
    let records = required(&checked);
    assert_eq!(records[0]["status"], "mismatch");
    assert_eq!(records[0]["found"], json!(["somewhere.else.example"]));
    assert_eq!(records[1]["status"], "not_found");
    assert!(
        records[1]["found"][0]
            .as_str()
            .unwrap()
            .contains("._domainkey.customer.com.customer.com")
    );
    assert!(
        records[1]["hint"]
            .as_str()
            .unwrap()
            .contains("adds the domain")
    );
    assert_eq!(records[2]["status"], "mismatch");
    assert!(records[2]["hint"].as_str().unwrap().contains("final dot"));
}

async fn correct_records_activate_a_domain_on_verify(engine: Engine) {
    let (app, dns) = app_with_dns(engine).await;
    let domain = app.add_domain("customer.com").await;
    dns.publish(&domain);
    dns.txt(
        "customer.com",
        &[
            "google-site-verification=x",
            &format!(
                "v=spf1 include:{} ~all",
                app.settings.spf_include().unwrap()
            ),
        ],
    );

    let checked = app.verify_domain("customer.com").await;
    assert_eq!(checked["status"], "active");
    assert!(checked["verified_at"].is_string());
    for record in required(&checked) {
        assert_eq!(record["status"], "verified");
    }
    let spf = checked["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "customer.com")
        .unwrap()
        .clone();
    assert_eq!(spf["status"], "verified");
    assert_eq!(
        spf["found"].as_array().unwrap().len(),
        1,
        "only SPF records are shown: {spf}"
    );
    let got: Value = app
        .api(Method::GET, "/v2/domains/customer.com")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["domain"]["status"], "active");
    assert_eq!(
        app.domain_events("customer.com").await.last().unwrap().0,
        "active"
    );
}

async fn the_background_verifier_activates_a_domain(engine: Engine) {
    let dns = TestDns::start().await;
    let app = spawn_app_with(engine, |s| {
        s.dns_nameservers = vec![dns.address];
        s.dns_check_interval = 1;
    })
    .await;
    let domain = app.add_domain("customer.com").await;
    dns.publish(&domain);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: Value = app
            .api(Method::GET, "/v2/domains/customer.com")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if got["domain"]["status"] == "active" {
            assert!(got["domain"]["last_checked_at"].is_string());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not activated in the background: {got}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn two_instances_never_check_one_domain_twice(engine: Engine) {
    let dns = TestDns::start().await;
    let app = spawn_app_with(engine, |s| {
        s.dns_nameservers = vec![dns.address];
        s.dns_check_interval = 1;
    })
    .await;
    app.another_instance().await;
    let mut first_records = Vec::new();
    for i in 0..12 {
        let domain = app.add_domain(&format!("customer{i}.com")).await;
        dns.publish(&domain);
        first_records.push(required(&domain)[0]["name"].as_str().unwrap().to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let active: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM domains WHERE status = 'active'")
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
        if active == 12 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {active} of 12 domains activated"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each domain was proven by its first check, by one instance, and not checked again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for name in first_records {
        assert_eq!(dns.times_asked(&name), 1, "{name}");
    }
}

async fn a_lost_proof_demotes_only_after_the_grace(engine: Engine) {
    let (app, dns) = app_with_dns(engine).await;
    let domain = app.add_domain("customer.com").await;
    dns.publish(&domain);
    assert_eq!(app.verify_domain("customer.com").await["status"], "active");

    for record in required(&domain) {
        dns.remove(record["name"].as_str().unwrap());
    }
    let within_grace = app.verify_domain("customer.com").await;
    assert_eq!(within_grace["status"], "active", "a day of grace");
    assert_eq!(required(&within_grace)[0]["status"], "not_found");

    // The proof has now been missing for 25 hours.
    app.advance_clock(Duration::from_secs(25 * 3600)).await;
    assert_eq!(app.verify_domain("customer.com").await["status"], "pending");
    let statuses: Vec<String> = app
        .domain_events("customer.com")
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(statuses, vec!["pending", "active", "pending"]);
}

async fn a_failed_lookup_changes_nothing(engine: Engine) {
    let (app, dns) = app_with_dns(engine).await;
    let domain = app.add_domain("customer.com").await;
    dns.publish(&domain);
    assert_eq!(app.verify_domain("customer.com").await["status"], "active");

    // One record goes missing: the proof is missing from now on.
    let first = required(&domain)[0]["name"].as_str().unwrap().to_string();
    dns.remove(&first);
    let missing = app.verify_domain("customer.com").await;
    assert_eq!(required(&missing)[0]["status"], "not_found");
    // Its lookup then fails, long after the day of grace ran out.
    dns.fail(&first);
    app.advance_clock(Duration::from_secs(25 * 3600)).await;
    let checked = app.verify_domain("customer.com").await;
    assert_eq!(
        checked["status"], "active",
        "SERVFAIL never flips an active domain"
    );
    let failed = required(&checked)
        .into_iter()
        .find(|r| r["name"] == first.as_str())
        .unwrap();
    assert_eq!(failed["status"], "lookup_failed");
    assert!(
        failed["found"][0].as_str().unwrap().contains("no answer"),
        "{failed}"
    );
    dns.publish(&domain);
    dns.recover(&first);
    assert_eq!(
        required(&app.verify_domain("customer.com").await)[0]["status"],
        "verified"
    );
}

async fn a_pending_domain_fails_after_72_hours(engine: Engine) {
    let (app, dns) = app_with_dns(engine).await;
    let domain = app.add_domain("customer.com").await;
    app.advance_clock(Duration::from_secs(73 * 3600)).await;
    assert_eq!(app.verify_domain("customer.com").await["status"], "failed");
    // The records can still come, and a verify then activates it.
    dns.publish(&domain);
    assert_eq!(app.verify_domain("customer.com").await["status"], "active");
}

async fn names_are_checked_and_normalised(engine: Engine) {
    let app = spawn_app(engine).await;
    for (bad, why) in [
        ("localhost", "no dot"),
        ("1.2.3.4", "IP address"),
        ("exa_mple.com", "letters, digits and hyphens"),
        ("a..com", "empty label"),
        ("user@customer.com", "address"),
    ] {
        let response = app
            .api(Method::POST, "/v2/domains")
            .json(&json!({"domain": bad}))
            .send()
            .await
            .unwrap();
        let error = error_code(response, 422).await;
        assert_eq!(error["param"], "domain");
        assert!(
            error["message"].as_str().unwrap().contains(why),
            "{bad}: {error}"
        );
    }
    let idn = app.add_domain("Bücher.de.").await;
    assert_eq!(idn["domain"], "xn--bcher-kva.de");
    let by_unicode = app
        .api(Method::GET, "/v2/domains/b%C3%BCcher.de")
        .send()
        .await
        .unwrap();
    assert_eq!(by_unicode.status(), 200);

    let again = app
        .api(Method::POST, "/v2/domains")
        .json(&json!({"domain": "BÜCHER.de"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(again, 409).await["code"], "domain_exists");

    let viewer = app.create_key(json!({"name": "v", "role": "viewer"})).await;
    let refused = app
        .with_key(&viewer, Method::POST, "/v2/domains")
        .json(&json!({"domain": "x.com"}))
        .send()
        .await
        .unwrap();
    error_code(refused, 403).await;
    assert_eq!(
        app.with_key(&viewer, Method::GET, "/v2/domains")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

async fn a_domain_belongs_to_one_account(engine: Engine) {
    let (app, dns) = app_with_dns(engine).await;
    let other = app.other_account().await;
    let theirs_first = app
        .with_key(&other.api_key, Method::POST, "/v2/domains")
        .json(&json!({"domain": "customer.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(theirs_first.status(), 201, "a pending claim blocks nobody");

    let domain = app.add_domain("customer.com").await;
    for path in [
        "/v2/domains/customer.com",
        "/v2/domains/customer.com/verify",
    ] {
        let method = if path.ends_with("verify") {
            Method::POST
        } else {
            Method::GET
        };
        let response = app
            .with_key(&other.api_key, method, path)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "each account sees its own claim");
    }
    dns.publish(&domain);
    assert_eq!(app.verify_domain("customer.com").await["status"], "active");

    // The other account's claim cannot become active, and a third account cannot add it.
    let theirs: Value = app
        .with_key(
            &other.api_key,
            Method::POST,
            "/v2/domains/customer.com/verify",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["domain"]["status"], "pending");
    let third = app.other_account().await;
    let refused = app
        .with_key(&third.api_key, Method::POST, "/v2/domains")
        .json(&json!({"domain": "customer.com"}))
        .send()
        .await
        .unwrap();
    let error = error_code(refused, 409).await;
    assert_eq!(error["code"], "domain_taken");
    assert!(
        !error["message"].as_str().unwrap().contains("acc_"),
        "never says who owns it"
    );

    app.add_domain("private.org").await;
    for (method, path) in [
        (Method::GET, "/v2/domains/private.org"),
        (Method::POST, "/v2/domains/private.org/verify"),
        (Method::DELETE, "/v2/domains/private.org"),
    ] {
        let response = app
            .with_key(&third.api_key, method, path)
            .send()
            .await
            .unwrap();
        error_code(response, 404).await;
    }
    let listed: Value = app
        .with_key(&third.api_key, Method::GET, "/v2/domains")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"], json!([]));
    assert_eq!(
        app.api(Method::GET, "/v2/domains/private.org")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

async fn domains_are_listed_in_pages(engine: Engine) {
    let app = spawn_app(engine).await;
    for name in ["c.com", "a.com", "b.com"] {
        app.add_domain(name).await;
    }
    let page: Value = app
        .api(Method::GET, "/v2/domains?limit=2&offset=1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["domain"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["b.com", "c.com"]);
    assert_eq!(
        (page["limit"].as_i64(), page["offset"].as_i64()),
        (Some(2), Some(1))
    );
    let all: Value = app
        .api(Method::GET, "/v2/domains")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["limit"], 50);
    assert_eq!(all["items"].as_array().unwrap().len(), 3);
    // Three CNAMEs and DMARC: no SPF is advised without sending addresses to authorise.
    assert_eq!(all["items"][0]["records"].as_array().unwrap().len(), 4);
    let active: Value = app
        .api(Method::GET, "/v2/domains?status=active")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(active["items"], json!([]));

    for query in [
        "limit=0",
        "limit=201",
        "limit=x",
        "offset=-1",
        "status=gone",
    ] {
        let response = app
            .api(Method::GET, &format!("/v2/domains?{query}"))
            .send()
            .await
            .unwrap();
        let error = error_code(response, 422).await;
        assert!(error["param"].is_string(), "{query}: {error}");
    }
}

async fn deleting_a_domain_removes_its_keys(engine: Engine) {
    let app = spawn_app(engine).await;
    app.add_domain("customer.com").await;
    let deleted = app
        .api(Method::DELETE, "/v2/domains/customer.com")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let body: Value = deleted.json().await.unwrap();
    assert_eq!(
        body,
        json!({"ok": true, "deleted": {"domain": "customer.com"}})
    );
    error_code(
        app.api(Method::GET, "/v2/domains/customer.com")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dkim_keys")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(keys, 0);
    error_code(
        app.api(Method::DELETE, "/v2/domains/customer.com")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
}
