//! DKIM keys rotate behind the domain's three selectors: the new key is published at
//! once, signs after the switch delay, and the old one stays published until it retires;
//! the tenant's CNAMEs never change. Every message carries an RSA and an Ed25519
//! signature, and dkimpy (with PyNaCl) verifies both through the CNAME chain.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_engines;
use crate::dkim_dns::{resolver, txt};
use crate::helpers::dns::TestDns;
use crate::helpers::judges::{dkim_signatures, importable};
use crate::helpers::smtp::{Received, TestSmtp};
use crate::helpers::{Engine, TestApp, spawn_app_with_relay};

both_engines!(
    a_rotation_publishes_at_once_switches_later_and_retires_the_old_key,
    two_instances_rotate_a_domain_once,
    the_second_signature_can_be_turned_off,
    a_rotation_is_the_account_editors_to_ask_for,
    a_domain_from_before_ed25519_gets_its_key_without_a_dns_change,
);

#[tokio::test]
async fn a_switch_sooner_than_the_records_ttl_stops_the_start() {
    let dir = crate::helpers::test_dir();
    let settings = mailroom::config::Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        dkim_switch_after_seconds: 60,
        ..Default::default()
    };
    let error = match mailroom::Application::build(&settings).await {
        Ok(_) => panic!("started with a switch sooner than the TTL"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("MAILROOM_DKIM_SWITCH_AFTER_SECONDS (60) must be at least"),
        "{error}"
    );
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// An app with its DNS server, a tenant DNS server and the system relay; `customer.com`
/// active.
async fn set_up(
    engine: Engine,
    configure: impl FnOnce(&mut mailroom::config::Settings),
) -> (TestApp, TestSmtp, TestDns) {
    let dns = TestDns::start().await;
    let (app, relay) = spawn_app_with_relay(engine, |s| {
        s.dns_nameservers = vec![dns.address];
        s.dns_listen = Some("127.0.0.1:0".parse().unwrap());
        configure(s);
    })
    .await;
    dns.delegate("dkim.mailroom.test", app.dns_address.unwrap());
    let domain = app.add_domain("customer.com").await;
    dns.publish(&domain);
    assert_eq!(app.verify_domain("customer.com").await["status"], "active");
    (app, relay, dns)
}

async fn domain(app: &TestApp, name: &str) -> Value {
    app.get_json(&format!("/v2/domains/{name}")).await["domain"].clone()
}

/// The CNAMEs the tenant publishes.
fn cnames(domain: &Value) -> Vec<Value> {
    domain["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "CNAME")
        .map(|r| json!([r["name"], r["value"]]))
        .collect()
}

/// Each key as (selector, algorithm, state).
fn keys(domain: &Value) -> Vec<(String, String, String)> {
    domain["dkim"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["selector"].as_str().unwrap().to_string(),
                k["algorithm"].as_str().unwrap().to_string(),
                k["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Each `DKIM-Signature` of a message as (a=, s=), top first.
fn signatures(message: &Received) -> Vec<(String, String)> {
    let text = message.data.replace("\r\n", "\n");
    let head = text.split("\n\n").next().unwrap().replace("\n\t", " ");
    head.lines()
        .filter_map(|line| line.strip_prefix("DKIM-Signature:"))
        .map(|fields| {
            let tag = |name: &str| {
                fields
                    .split(';')
                    .map(str::trim)
                    .find_map(|f| f.strip_prefix(&format!("{name}=")))
                    .unwrap()
                    .to_string()
            };
            (tag("a"), tag("s"))
        })
        .collect()
}

/// Queues a message From customer.com and answers it as the relay received it.
async fn send(app: &TestApp, relay: &TestSmtp, to: &str) -> Received {
    let count = relay.received().len() + 1;
    app.queue("billing@customer.com", to).await;
    relay.newest_to(to, count).await
}

async fn published(app: &TestApp, selector: &str) -> String {
    let server = app.dns_address.unwrap();
    txt(
        &resolver(server, false),
        &format!("{selector}.dkim.mailroom.test."),
    )
    .await
    .unwrap()
}

async fn rotate(app: &TestApp, algorithm: &str) -> reqwest::Response {
    app.api(Method::POST, "/v2/domains/customer.com/dkim/rotate")
        .json(&json!({ "algorithm": algorithm }))
        .send()
        .await
        .unwrap()
}

async fn a_rotation_publishes_at_once_switches_later_and_retires_the_old_key(engine: Engine) {
    if !importable("dkim, dns.message, nacl") {
        return;
    }
    let (app, relay, dns) = set_up(engine, |_| {}).await;
    let before = domain(&app, "customer.com").await;
    let records = cnames(&before);
    let keys_before = keys(&before);
    let [(rsa, _, _), (ed, _, _), (standby, _, _)] = keys_before.as_slice() else {
        panic!("three keys: {before}");
    };
    let (rsa, ed, standby) = (rsa.clone(), ed.clone(), standby.clone());
    assert_eq!(
        keys_before,
        [
            (rsa.clone(), "rsa".into(), "signing".into()),
            (ed.clone(), "ed25519".into(), "signing".into()),
            (standby.clone(), "ed25519".into(), "standby".into()),
        ]
    );
    assert_eq!(before["dkim"]["keys"][0]["bits"], 2048);
    let created = before["created_at"].as_str().unwrap();
    let next = before["dkim"]["next_rotation_at"].as_str().unwrap();
    let days = |a: &str, b: &str| {
        let parse = |t: &str| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap()
        };
        (parse(b) - parse(a)).whole_days()
    };
    assert_eq!(
        days(created, next),
        180,
        "rotated every 180 days by default"
    );

    // Every message carries both signatures, and dkimpy verifies both.
    let first = send(&app, &relay, "one@example.org").await;
    assert_eq!(
        signatures(&first),
        [
            ("rsa-sha256".into(), rsa.clone()),
            ("ed25519-sha256".into(), ed.clone())
        ]
    );
    let (ok, judged) = dkim_signatures(first.data.as_bytes(), dns.address, &app);
    assert!(ok, "{judged:?}");
    assert_eq!(judged.len(), 2);

    // The new key answers from mailroom's DNS at once, behind the standby selector.
    let standby_record = published(&app, &standby).await;
    let response = rotate(&app, "rsa").await;
    assert_eq!(response.status(), 200);
    let rotated = response.json::<Value>().await.unwrap()["domain"].clone();
    assert_eq!(
        keys(&rotated),
        [
            (rsa.clone(), "rsa".into(), "signing".into()),
            (ed.clone(), "ed25519".into(), "signing".into()),
            (standby.clone(), "rsa".into(), "published".into()),
        ]
    );
    assert!(rotated["dkim"]["keys"][0]["retire_at"].is_string());
    let new_record = published(&app, &standby).await;
    assert_ne!(new_record, standby_record);
    assert!(
        new_record.starts_with("v=DKIM1; k=rsa; p=MII"),
        "{new_record}"
    );
    assert_eq!(cnames(&rotated), records);

    // One rotation at a time: the standby is taken until the old key retires.
    let again = rotate(&app, "ed25519").await;
    assert_eq!(again.status(), 409);
    let error = again.json::<Value>().await.unwrap();
    assert_eq!(error["error"]["code"], "rotation_in_progress", "{error}");

    // Until the switch, mail is signed with the old key.
    let second = send(&app, &relay, "two@example.org").await;
    assert_eq!(signatures(&second)[0], ("rsa-sha256".into(), rsa.clone()));

    // After it, with the new one; mail signed before still verifies.
    app.advance_clock(HOUR).await;
    let third = send(&app, &relay, "three@example.org").await;
    assert_eq!(
        signatures(&third),
        [
            ("rsa-sha256".into(), standby.clone()),
            ("ed25519-sha256".into(), ed.clone())
        ]
    );
    for message in [&first, &second, &third] {
        let (ok, judged) = dkim_signatures(message.data.as_bytes(), dns.address, &app);
        assert!(ok, "{judged:?}");
    }
    let switched = domain(&app, "customer.com").await;
    assert_eq!(
        keys(&switched),
        [
            (rsa.clone(), "rsa".into(), "retiring".into()),
            (ed.clone(), "ed25519".into(), "signing".into()),
            (standby.clone(), "rsa".into(), "signing".into()),
        ]
    );

    // Retired, the old selector is the standby, its key no longer published: mail it
    // signed verifies by its Ed25519 signature only.
    app.advance_clock(168 * HOUR).await;
    let retired = domain(&app, "customer.com").await;
    assert_eq!(
        keys(&retired),
        [
            (rsa.clone(), "rsa".into(), "standby".into()),
            (ed.clone(), "ed25519".into(), "signing".into()),
            (standby.clone(), "rsa".into(), "signing".into()),
        ]
    );
    assert_eq!(published(&app, &rsa).await, "v=DKIM1; k=rsa; p=");
    let (ok, judged) = dkim_signatures(first.data.as_bytes(), dns.address, &app);
    assert!(!ok);
    assert_eq!(
        judged,
        [
            ("rsa-sha256".into(), rsa.clone(), false),
            ("ed25519-sha256".into(), ed.clone(), true)
        ]
    );
    assert_eq!(cnames(&retired), records);
    // Nothing can sign with a retired key any more: its private half is gone too.
    let mut forgotten = false;
    for _ in 0..100 {
        let private: String =
            sqlx::query_scalar("SELECT private_key FROM dkim_keys WHERE token = $1")
                .bind(&rsa)
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
        forgotten = private.is_empty();
        if forgotten {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(forgotten, "the retired private key is forgotten");

    // The freed standby takes the next rotation.
    let ed_rotation = rotate(&app, "ed25519").await;
    assert_eq!(ed_rotation.status(), 200);
    let state = keys(&ed_rotation.json::<Value>().await.unwrap()["domain"]);
    assert_eq!(
        state[0],
        (rsa.clone(), "ed25519".into(), "published".into())
    );
    assert!(
        published(&app, &rsa)
            .await
            .starts_with("v=DKIM1; k=ed25519; p=")
    );

    // Each rotation is announced with the keys as they stood.
    let events = app.get_json("/v2/events?type=domain.dkim_rotated").await["items"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["data"]["domain"], "customer.com");
    assert_eq!(events[0]["data"]["dkim"]["keys"][2]["state"], "published");
    let sealed: Vec<String> = sqlx::query_scalar("SELECT private_key FROM dkim_keys")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    for event in &events {
        let text = event.to_string();
        for sealed in sealed.iter().filter(|s| !s.is_empty()) {
            assert!(!text.contains(&sealed[..40]), "no private key in {text}");
        }
    }
}

async fn two_instances_rotate_a_domain_once(engine: Engine) {
    let (app, _relay, _dns) = set_up(engine, |s| s.dkim_rotate_days = 10).await;
    let other = app.another_instance().await;
    let before = domain(&app, "customer.com").await;
    assert!(before["dkim"]["next_rotation_at"].is_string());

    // Asked of both instances at once, the rotation happens once.
    let ask = |address: String| {
        let app = &app;
        async move {
            app.client
                .post(format!("{address}/v2/domains/customer.com/dkim/rotate"))
                .bearer_auth(&app.admin.api_key)
                .json(&json!({"algorithm": "rsa"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let (a, b) = tokio::join!(ask(app.address.clone()), ask(other));
    let mut statuses = [a, b];
    statuses.sort();
    assert_eq!(statuses, [200, 409]);
    let published = |domain: &Value| {
        keys(domain)
            .iter()
            .filter(|(_, _, state)| state == "published")
            .count()
    };
    assert_eq!(published(&domain(&app, "customer.com").await), 1);

    // On schedule (the Ed25519 key has signed for 10 days by then, the RSA key not
    // quite), both instances' rounds find the domain due: one rotates it.
    app.advance_clock(HOUR + 168 * HOUR).await;
    let rested = domain(&app, "customer.com").await;
    assert_eq!(published(&rested), 0);
    app.advance_clock(71 * HOUR + 30 * MINUTE).await;
    let mut rotations = 0;
    for _ in 0..100 {
        rotations = app.get_json("/v2/events?type=domain.dkim_rotated").await["items"]
            .as_array()
            .unwrap()
            .len();
        if rotations == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both instances' rounds have run again by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = app.get_json("/v2/events?type=domain.dkim_rotated").await;
    assert_eq!(events["items"].as_array().unwrap().len(), 2, "{events}");
    assert_eq!(published(&domain(&app, "customer.com").await), 1);
    assert_eq!(rotations, 2);
}

async fn the_second_signature_can_be_turned_off(engine: Engine) {
    if !importable("dkim, dns.message") {
        return;
    }
    let (app, relay, dns) = set_up(engine, |s| s.dkim_ed25519 = false).await;
    let message = send(&app, &relay, "one@example.org").await;
    let signed = signatures(&message);
    assert_eq!(signed.len(), 1);
    assert_eq!(signed[0].0, "rsa-sha256");
    let (ok, judged) = dkim_signatures(message.data.as_bytes(), dns.address, &app);
    assert!(ok, "{judged:?}");
}

async fn a_rotation_is_the_account_editors_to_ask_for(engine: Engine) {
    let (app, _relay, _dns) = set_up(engine, |_| {}).await;
    let before = domain(&app, "customer.com").await;
    let path = "/v2/domains/customer.com/dkim/rotate";

    let viewer = app
        .create_key(json!({"name": "viewer", "role": "viewer"}))
        .await;
    let response = app
        .with_key(&viewer, Method::POST, path)
        .json(&json!({"algorithm": "rsa"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    let other = app.other_account().await.api_key;
    let response = app
        .with_key(&other, Method::POST, path)
        .json(&json!({"algorithm": "rsa"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    for body in [json!({"algorithm": "dsa"}), json!({"algorithm": 1})] {
        let response = app
            .api(Method::POST, path)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let error = response.json::<Value>().await.unwrap();
        assert_eq!(status, 422, "{body}: {error}");
        assert_eq!(error["error"]["param"], "algorithm", "{error}");
    }
    assert_eq!(domain(&app, "customer.com").await["dkim"], before["dkim"]);

    // Without an algorithm, the RSA key rotates.
    let response = app
        .api(Method::POST, path)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let rotated = response.json::<Value>().await.unwrap()["domain"].clone();
    assert_eq!(rotated["dkim"]["keys"][2]["algorithm"], "rsa");
    assert_eq!(rotated["dkim"]["keys"][2]["state"], "published");
}

async fn a_domain_from_before_ed25519_gets_its_key_without_a_dns_change(engine: Engine) {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
    if !importable("dkim, dns.message, nacl") {
        return;
    }
    let (app, relay, dns) = set_up(engine, |_| {}).await;
    let records = cnames(&domain(&app, "customer.com").await);
    // The keys as they were before Ed25519, once migrated: three RSA keys, the first
    // signing since it was made, the other two standing by.
    let master_key = mailroom::store::crypto::MasterKey::load(&app.settings).unwrap();
    let tokens: Vec<(String, i64)> =
        sqlx::query_as("SELECT token, position FROM dkim_keys ORDER BY position")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    for (token, position) in &tokens[1..] {
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let public = key.to_public_key().to_public_key_der().unwrap();
        let private = key.to_pkcs8_der().unwrap();
        sqlx::query(
            "UPDATE dkim_keys SET algorithm = 'rsa', signing_since = NULL, public_key = $1, \
             private_key = $2 WHERE token = $3 AND position = $4",
        )
        .bind(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            public.as_bytes(),
        ))
        .bind(master_key.seal(private.as_bytes(), &format!("dkim:{token}")))
        .bind(token)
        .bind(position)
        .execute(&app.db.pool)
        .await
        .unwrap();
    }
    let (rsa, second, third) = (&tokens[0].0, &tokens[1].0, &tokens[2].0);
    let old = send(&app, &relay, "before@example.org").await;
    assert_eq!(signatures(&old), [("rsa-sha256".into(), rsa.clone())]);

    // Started on such a database, mailroom publishes an Ed25519 key behind the first
    // standby selector; it signs once resolvers can no longer hold that selector's old
    // record.
    app.another_instance().await;
    let mut upgraded = Vec::new();
    for _ in 0..100 {
        upgraded = keys(&domain(&app, "customer.com").await);
        if upgraded[1].1 == "ed25519" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        upgraded,
        [
            (rsa.clone(), "rsa".into(), "signing".into()),
            (second.clone(), "ed25519".into(), "published".into()),
            (third.clone(), "rsa".into(), "standby".into()),
        ]
    );
    assert!(
        published(&app, second)
            .await
            .starts_with("v=DKIM1; k=ed25519; p=")
    );
    let waiting = send(&app, &relay, "waiting@example.org").await;
    assert_eq!(signatures(&waiting).len(), 1);
    // The third selector stands by, but a key waiting to sign is a rotation under way.
    let refused = rotate(&app, "rsa").await;
    assert_eq!(refused.status(), 409);

    app.advance_clock(HOUR).await;
    let both = send(&app, &relay, "both@example.org").await;
    assert_eq!(
        signatures(&both),
        [
            ("rsa-sha256".into(), rsa.clone()),
            ("ed25519-sha256".into(), second.clone())
        ]
    );
    let (ok, judged) = dkim_signatures(both.data.as_bytes(), dns.address, &app);
    assert!(ok, "{judged:?}");
    assert_eq!(cnames(&domain(&app, "customer.com").await), records);
}
